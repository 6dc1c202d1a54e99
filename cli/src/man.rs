//! The man pages, from the clap definitions.

/// A command's man page: clap_mangen's sections, but the commands listed by name with
/// what they do (clap_mangen names a page per command, `lanspread-status(1)`, which is
/// not installed) and the text after `--help`'s options under its own heading
/// (`EXIT STATUS: …` → `.SH EXIT STATUS`).
pub fn man_page(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subs.is_empty() {
        page.extend_from_slice(b".SH COMMANDS\n");
        for sub in subs {
            page.extend_from_slice(format!(".TP\n\\fB{}\\fR\n", roff(sub.get_name())).as_bytes());
            if let Some(about) = sub.get_about() {
                page.extend_from_slice(format!("{}\n", roff(&about.to_string())).as_bytes());
            }
        }
    }
    if let Some(after) = cmd.get_after_help() {
        let after = after.to_string();
        let (head, text) = after.split_once(": ").unwrap_or(("NOTES", &after));
        page.extend_from_slice(format!(".SH {}\n", roff(&head.to_uppercase())).as_bytes());
        let mut chars = text.chars();
        let text: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        for para in text.split("\n\n") {
            page.extend_from_slice(format!(".PP\n{}\n", roff(para)).as_bytes());
        }
    }
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// Text for roff: backslashes and hyphens escaped, no line taken for a request.
fn roff(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with(['.', '\'']) {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
