# Offset IQR seen by a chronyd client (minpoll -4) of ntsd and of chrony's
# NTS server, both on CPU 0, basic and interleaved (xleave), at light load and
# under an NTS flood of 60,000 and 120,000 requests/s asked of each server.
# Medians of 3 paired 30-s runs of bench/accuracy.sh (bench/RESULTS.md,
# "Interleaved mode"). Render: gnuplot bench/results/accuracy-xleave.gp
set terminal svg size 760,420 font "sans,12"
set output "bench/results/accuracy-xleave.svg"
set title "Offset IQR seen by a chrony client (µs, lower is better; log scale)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set yrange [0.05:10]
set ylabel "offset IQR (µs)"
set key top left
set grid ytics
$data << END
load "ntsd, basic" "chrony, basic" "ntsd, xleave" "chrony, xleave"
light 1.72 1.54 0.30 0.25
"60k/s" 3.88 0.82 0.24 0.24
"120k/s" 4.23 0.70 0.12 0.14
END
plot $data using 2:xtic(1) title columnheader(2), \
     '' using 3 title columnheader(3), \
     '' using 4 title columnheader(4), \
     '' using 5 title columnheader(5)
