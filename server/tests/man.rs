//! The manual pages and shell completions in `docs/` are what the CLI and
//! the configuration say:
//! - `docs/man/man8/ntsd.8` and the completions are generated from the clap
//!   definitions (`clap_mangen`, `clap_complete`); this test compares the
//!   committed files with a fresh rendering, and `NTSD_BLESS=1 cargo test -p
//!   ntsd --test man` rewrites them after a CLI change;
//! - `docs/man/man5/ntsd.toml.5` is written by hand and must name every key
//!   of `config.toml.example`;
//! - both pages render with `man -l` where `man` is installed.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use ntsd::cli::args::Cli;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The CLI with the release alone as its version: the committed page must
/// not change with every commit.
fn command() -> clap::Command {
    Cli::command().version(env!("CARGO_PKG_VERSION"))
}

fn render(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    f(&mut out).expect("render");
    String::from_utf8(out).expect("roff is text")
}

/// One section a command: its description, synopsis and options, under
/// the command's full name (`ntsd keys list`); then its subcommands.
fn command_sections(cmd: &clap::Command, prefix: &str, out: &mut String) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix} {}", sub.get_name());
        let sub = sub.clone().bin_name(&name).version(None::<&str>);
        if sub.has_subcommands() {
            command_sections(&sub, &name, out);
            continue;
        }
        let man = clap_mangen::Man::new(sub.clone());
        out.push_str(&format!(".SH \"{}\"\n", name.to_uppercase()));
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        out.push_str(&roff_text(&about));
        let synopsis = render(|w| man.render_synopsis_section(w));
        out.push_str(&synopsis.replacen(".SH SYNOPSIS", ".SS Synopsis", 1));
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            let options = render(|w| man.render_options_section(w));
            out.push_str(&options.replacen(".SH OPTIONS", ".SS Options", 1));
        }
    }
}

/// One line of plain text for roff (a backslash or leading dot escaped).
fn roff_line(text: &str) -> String {
    let line = text.replace('\\', "\\e");
    match line.starts_with('.') || line.starts_with('\'') {
        true => format!("\\&{line}"),
        false => line,
    }
}

/// Plain text as a roff paragraph (a leading dot or quote escaped).
fn roff_text(text: &str) -> String {
    let mut out = String::from(".PP\n");
    for line in text.lines() {
        let line = line.replace('\\', "\\e");
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `ntsd(8)`: the title, name, synopsis and description, the list of
/// commands, then every command with every option.
fn ntsd_8() -> String {
    let cmd = command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("ntsd {}", env!("CARGO_PKG_VERSION")));
    let mut page = String::new();
    for part in [
        render(|w| man.render_title(w)),
        render(|w| man.render_name_section(w)),
        render(|w| man.render_synopsis_section(w)),
        render(|w| man.render_description_section(w)),
    ] {
        page.push_str(&part);
    }
    // The commands, all on this page (not one page each, as clap_mangen's
    // own list would point to).
    page.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        page.push_str(&format!(
            ".TP\n\\fBntsd {}\\fR\n{}\n",
            sub.get_name(),
            roff_line(&about)
        ));
    }
    command_sections(&cmd, "ntsd", &mut page);
    page.push_str(
        ".SH FILES\n.TP\n/etc/ntsd/config.toml\nThe configuration that every command reads without \\fB\\-\\-config\\fR; see \\fBntsd.toml\\fR(5).\n\
         .TP\n/var/lib/ntsd\nThe master keys (\\fB[keys] dump_dir\\fR).\n\
         .SH SIGNALS\n.TP\nSIGTERM, SIGINT\nStop cleanly.\n.TP\nSIGHUP\nReload the certificates (only them: a changed configuration file needs a restart).\n\
         .TP\nSIGUSR1\nSeal new cookies with a new master key now.\n\
         .SH SEE ALSO\n\\fBntsd.toml\\fR(5), \\fBchronyd\\fR(8), \\fBchronyc\\fR(1), RFC 8915, RFC 9769\n",
    );
    page
}

/// The bash and zsh completions.
fn completions() -> [(String, &'static str); 2] {
    let gen = |shell: clap_complete::Shell| {
        let mut cmd = command();
        render(|w| {
            clap_complete::generate(shell, &mut cmd, "ntsd", w);
            Ok(())
        })
    };
    [
        (
            gen(clap_complete::Shell::Bash),
            "docs/completions/ntsd.bash",
        ),
        (gen(clap_complete::Shell::Zsh), "docs/completions/_ntsd"),
    ]
}

/// Compares `text` with the committed `path`, or writes it with
/// `NTSD_BLESS=1`.
fn check_or_bless(text: &str, path: &str) {
    let file = root().join(path);
    if std::env::var_os("NTSD_BLESS").is_some() {
        std::fs::create_dir_all(file.parent().expect("a directory")).expect("mkdir");
        std::fs::write(&file, text).expect("write");
        return;
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == text,
        "{path} is not what the CLI generates: run NTSD_BLESS=1 cargo test -p ntsd --test man"
    );
}

#[test]
fn the_man_page_and_completions_match_the_cli() {
    let page = ntsd_8();
    for needle in [
        "NTSD RUN",
        "NTSD KEYS LIST",
        "NTSD CLIENTS",
        "\\-\\-config",
        "/etc/ntsd/config.toml",
        "\\-\\-top",
    ] {
        assert!(
            page.contains(needle),
            "{needle} missing from ntsd.8:\n{page}"
        );
    }
    check_or_bless(&page, "docs/man/man8/ntsd.8");
    for (text, path) in completions() {
        assert!(text.contains("check-config"), "{path}");
        check_or_bless(&text, path);
    }
}

/// Every key of config.toml.example (set or commented out) is in
/// ntsd.toml(5), under its section.
#[test]
fn the_config_page_names_every_key_of_the_example() {
    let example = std::fs::read_to_string(root().join("config.toml.example")).unwrap();
    let page = std::fs::read_to_string(root().join("docs/man/man5/ntsd.toml.5")).unwrap();
    let mut section = String::new();
    let mut keys = 0;
    for line in example.lines() {
        let line = line.trim_start_matches("# ").trim();
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            if !s.is_empty() && !s.contains(' ') && !line.contains('=') {
                section = s.trim_start_matches('[').to_owned();
                assert!(
                    page.contains(&format!("[{section}]")),
                    "[{section}] missing"
                );
            }
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.contains(' ') || key.is_empty() || section.is_empty() {
            continue;
        }
        keys += 1;
        assert!(
            page.contains(&format!(".B {key}")) || page.contains(&format!("\\fB{key}\\fR")),
            "[{section}] {key} missing from ntsd.toml.5"
        );
    }
    assert!(keys > 40, "{keys} keys read from the example");
}

/// Both pages render with `man -l` (where man is installed; CI has it).
#[test]
fn the_pages_render() {
    if !testkit::require("man (man-db)", testkit::have("man")) {
        return;
    }
    for page in ["docs/man/man8/ntsd.8", "docs/man/man5/ntsd.toml.5"] {
        let out = std::process::Command::new("man")
            .arg("-l")
            .arg(root().join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .expect("man");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.len() > 1000, "{page}: {out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{page}: {out:?}"
        );
    }
}

/// The bash completion loads and completes `ntsd`'s commands.
#[test]
fn the_bash_completion_loads() {
    if !testkit::require("bash", testkit::have("bash")) {
        return;
    }
    let script = root().join("docs/completions/ntsd.bash");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p ntsd && COMP_WORDS=(ntsd che) COMP_CWORD=1 && _ntsd ntsd che ntsd && echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("-F _ntsd ntsd"), "{text}");
    assert!(text.contains("check-config"), "{text}");
}
