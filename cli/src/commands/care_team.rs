//! `tvaers care-team [CPR]`: who works with a citizen in the other
//! organisations and how to reach them, through the local API (see
//! `tvaers_daemon::care_team`). The CPR number is read from standard input
//! when omitted and is never printed; the daemon audits each lookup.

use std::path::Path;

use serde_json::{Value, json};
use tvaers_client::v1;

use crate::commands::{load_config, local, read_cpr};
use crate::output::{Output, Table, time};

fn member_json(member: &v1::CareTeamMember) -> Value {
    let contact = member.contact.clone().unwrap_or_default();
    json!({
        "org_id": member.org_id,
        "org_name": member.org_name,
        "unit": member.unit,
        "name": contact.name,
        "role": contact.role,
        "phone": contact.phone,
        "email": contact.email,
        "works_at": member.works_at,
        "source": member.source,
        "notice_id": member.notice_id,
        "as_of": time(member.as_of_ms),
        "as_of_ms": member.as_of_ms,
        "learned_at": time(member.learned_at_ms),
        "learned_at_ms": member.learned_at_ms,
    })
}

/// The organisation for people: its name when this site knows it.
fn organisation(member: &v1::CareTeamMember) -> String {
    if member.org_name.is_empty() {
        member.org_id.clone()
    } else {
        format!("{} ({})", member.org_name, member.org_id)
    }
}

pub async fn run(cpr: Option<String>, config_path: &Path, out: Output) -> anyhow::Result<()> {
    let cpr = read_cpr(cpr)?;
    let config = load_config(config_path)?;
    let members = local(&config).await?.care_team(&cpr).await?;
    let value = json!({ "members": members.iter().map(member_json).collect::<Vec<_>>() });
    out.emit(&value, || {
        if members.is_empty() {
            return "nobody in another organisation is known to work with this citizen yet"
                .to_owned();
        }
        let mut table = Table::new(&[
            "ORGANISATION",
            "UNIT",
            "NAME",
            "ROLE",
            "PHONE",
            "EMAIL",
            "AS OF",
            "LEARNED",
        ]);
        for member in &members {
            let contact = member.contact.clone().unwrap_or_default();
            table.row(vec![
                organisation(member),
                member.unit.clone(),
                contact.name,
                contact.role,
                contact.phone,
                contact.email,
                time(member.as_of_ms),
                time(member.learned_at_ms),
            ]);
        }
        table.render()
    });
    Ok(())
}
