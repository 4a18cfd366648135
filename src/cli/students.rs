//! `seatrush students`: the term's student registry, imported from the registrar's file, and
//! one student's standing.

use std::process::ExitCode;

use clap::Subcommand;

use super::common::Common;
use seatrush_core::admin;
use seatrush_core::domain::{HoldId, StudentId};
use seatrush_core::store::StudentDetail;

#[derive(Subcommand)]
pub enum StudentsCommand {
    /// Create or replace students from a CSV file
    /// (student_id,max_credits,registration_opens_at,holds; holds `;`-separated).
    Import {
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Put a hold on a student's account (unpaid fees, missing advising...): from then on the
    /// rules refuse them any enroll or swap, until it is cleared. Taken in turn with every
    /// judgement of that student, on every worker (the student's turn orders them).
    Hold {
        id: String,
        hold: String,
        #[arg(long)]
        json: bool,
    },
    /// Clear a hold from a student's account.
    ClearHold {
        id: String,
        hold: String,
        #[arg(long)]
        json: bool,
    },
    /// One student: holds, time ticket, credits held, courses held and waited for.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(common: &Common, command: StudentsCommand) -> anyhow::Result<ExitCode> {
    match command {
        StudentsCommand::Import { file, json } => {
            let students = admin::read_student_file(&file)?;
            let store = common.store().await?;
            let new = store.import_students(&students).await?;
            let total = students.len();
            if json {
                let report = serde_json::json!({"imported": total, "new": new});
                println!("{report}");
            } else {
                println!("{total} students imported ({new} new)");
            }
            Ok(ExitCode::SUCCESS)
        }
        StudentsCommand::Hold { id, hold, json } => {
            change_hold(common, &id, &hold, true, json).await
        }
        StudentsCommand::ClearHold { id, hold, json } => {
            change_hold(common, &id, &hold, false, json).await
        }
        StudentsCommand::Show { id, json } => {
            let student = StudentId::parse(id)?;
            let Some(detail) = common.store().await?.student_detail(&student).await? else {
                anyhow::bail!("no student {student} in the registry");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", describe(&detail));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn change_hold(
    common: &Common,
    id: &str,
    hold: &str,
    on: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let student = StudentId::parse(id)?;
    let hold = HoldId::parse(hold)?;
    let store = common.store().await?;
    let Some(holds) = store.change_hold(&student, hold.as_str(), on).await? else {
        anyhow::bail!("no student {student} in the registry");
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"student_id": student.as_str(), "holds": holds})
        );
    } else if holds.is_empty() {
        println!("student {student}: no holds");
    } else {
        println!("student {student}: holds {}", holds.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(d: &StudentDetail) -> String {
    let mut text = format!("student {}\n", d.student_id);
    text.push_str(&format!(
        "  credits {} held of {}\n",
        d.credits_held, d.max_credits
    ));
    match d.registration_opens_at {
        Some(at) => text.push_str(&format!("  registration opens {}\n", at.to_rfc3339())),
        None => text.push_str("  registration opens with everyone's\n"),
    }
    if d.holds.is_empty() {
        text.push_str("  no holds\n");
    } else {
        text.push_str(&format!("  holds: {}\n", d.holds.join(", ")));
    }
    for c in &d.courses_held {
        text.push_str(&format!(
            "  holds a seat in {} ({} credits{})\n",
            c.course_id,
            c.credits,
            if c.meetings.is_empty() {
                String::new()
            } else {
                format!(", {}", c.meetings)
            }
        ));
    }
    for w in &d.waiting_for {
        text.push_str(&format!(
            "  waits for {} at position {}\n",
            w.course_id, w.position
        ));
    }
    text
}
