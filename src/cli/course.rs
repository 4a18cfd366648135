//! `seatrush course`: create, change (through the course actor), show, list and import
//! courses, with their rendering.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::common::Common;
use super::request::describe;
use seatrush_core::admin;
use seatrush_core::client::Client;
use seatrush_core::domain::{CourseId, CoursePatch, CourseSettings, Meetings, Opening};
use seatrush_core::store::{CourseDetail, CourseRow};

#[derive(Subcommand)]
pub enum CourseCommand {
    /// Create a course.
    Add {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change a course through its course actor (waits for a worker to apply it). Raising the
    /// seats promotes from the waitlist at once; going below what is held is refused.
    Set {
        id: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[arg(long)]
        json: bool,
        /// Seconds to wait for a worker's answer.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Show one course: settings, enrolled students, the waitlist in order, and for a draw its
    /// commitment, its entrants (with their rank once drawn) and, after the draw, its seed.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List courses with their seat counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a term's courses from a CSV file (course_id,seats,waitlist,opens_at,closes_at,
    /// and optionally opening,entries_open_at); existing courses get the file's settings
    /// through their actors.
    Import {
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
        /// Seconds to wait for a worker's answer to each change of an existing course.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

/// A course's settings on the command line; instants are RFC 3339, `none` clears one.
#[derive(Args)]
pub struct SettingsArgs {
    #[arg(long)]
    seats: Option<u32>,
    /// Places on the waitlist (0: none).
    #[arg(long)]
    waitlist: Option<u32>,
    /// Requests before this instant are rejected as not open (RFC 3339, or `none`).
    #[arg(long)]
    opens_at: Option<admin::InstantArg>,
    /// Requests from this instant on are rejected as closed (RFC 3339, or `none`).
    #[arg(long)]
    closes_at: Option<admin::InstantArg>,
    /// `first-come` (requests before the opening are refused) or `draw` (they enter a draw,
    /// performed at --opens-at, whose commitment is public from now on).
    #[arg(long, value_parser = admin::parse_opening)]
    opening: Option<Opening>,
    /// Under `draw`: entries are taken from this instant (RFC 3339, or `none`: any time before
    /// the opening).
    #[arg(long)]
    entries_open_at: Option<admin::InstantArg>,
    /// What the course counts toward a student's credit cap.
    #[arg(long)]
    credits: Option<u32>,
    /// Weekly meetings, for example "MO 09:00-10:30;WE 09:00-10:30" ("" for none).
    #[arg(long, value_parser = parse_meetings)]
    meetings: Option<Meetings>,
}

fn parse_meetings(raw: &str) -> Result<Meetings, String> {
    Meetings::parse(raw).map_err(|e| e.to_string())
}

impl SettingsArgs {
    /// The change asked for; the seed of a course that becomes a draw is chosen by the worker
    /// that applies it.
    fn patch(&self) -> CoursePatch {
        CoursePatch {
            seats: self.seats,
            waitlist: self.waitlist,
            opens_at: self.opens_at.map(|a| a.0),
            closes_at: self.closes_at.map(|a| a.0),
            opening: self.opening,
            entries_open_at: self.entries_open_at.map(|a| a.0),
            draw_seed: None,
            credits: self.credits,
            meetings: self.meetings.clone(),
        }
    }
}

pub async fn run(common: &Common, command: CourseCommand) -> anyhow::Result<ExitCode> {
    match command {
        CourseCommand::Add { id, settings } => add(common, id, settings).await,
        CourseCommand::Set {
            id,
            settings,
            json,
            timeout_secs,
        } => {
            set(
                common,
                id,
                settings,
                json,
                Duration::from_secs(timeout_secs),
            )
            .await
        }
        CourseCommand::Show { id, json } => {
            let course = CourseId::parse(id)?;
            let Some(detail) = common.store().await?.course_detail(&course).await? else {
                anyhow::bail!("no course {course}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", describe_detail(&detail));
            }
            Ok(ExitCode::SUCCESS)
        }
        CourseCommand::List { json } => {
            let courses = common.store().await?.list_courses().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&courses)?);
            } else {
                print!("{}", describe_list(&courses));
            }
            Ok(ExitCode::SUCCESS)
        }
        CourseCommand::Import {
            file,
            json,
            timeout_secs,
        } => import(common, &file, json, Duration::from_secs(timeout_secs)).await,
    }
}

async fn add(common: &Common, id: String, settings: SettingsArgs) -> anyhow::Result<ExitCode> {
    let course = CourseId::parse(id)?;
    let Some(seats) = settings.seats else {
        anyhow::bail!("--seats is required to create a course");
    };
    let settings = admin::with_seed(
        CourseSettings {
            capacity: seats,
            ..CourseSettings::default()
        }
        .patched(&settings.patch()),
    );
    admin::check_settings(&course, &settings)?;
    common.store().await?.add_course(&course, &settings).await?;
    println!("course {course} added: {}", describe_settings(&settings));
    Ok(ExitCode::SUCCESS)
}

async fn set(
    common: &Common,
    id: String,
    settings: SettingsArgs,
    json: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let course = CourseId::parse(id)?;
    let patch = settings.patch();
    if patch.is_empty() {
        anyhow::bail!(
            "nothing to change: give --seats, --waitlist, --opens-at, --closes-at, --opening, \
             --entries-open-at, --credits or --meetings"
        );
    }
    let client = Client::connect(&common.amqp_url()?, common.topology()).await?;
    let answers = admin::configure(&client, &course, patch, timeout).await;
    client.close().await;
    let answer = answers?.final_answer;
    if json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        println!("{}", describe(&answer));
    }
    Ok(if answer.reason.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn import(
    common: &Common,
    file: &std::path::Path,
    json: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let courses = admin::read_course_file(file)?;
    let store = common.store().await?;
    let client = Client::connect(&common.amqp_url()?, common.topology()).await?;
    let imported = admin::import(&store, &client, courses, timeout).await;
    client.close().await;
    let imported = imported?;
    if json {
        println!("{}", serde_json::to_string_pretty(&imported)?);
    } else {
        println!(
            "{} courses created, {} changed, {} refused",
            imported.created.len(),
            imported.changed.len(),
            imported.refused.len()
        );
        for (course, reason) in &imported.refused {
            println!("  {course}: refused ({reason})");
        }
    }
    Ok(if imported.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn describe_settings(s: &CourseSettings) -> String {
    let mut line = format!("{} seats, waitlist {}", s.capacity, s.waitlist);
    if s.credits > 0 {
        line.push_str(&format!(", {} credits", s.credits));
    }
    if !s.meetings.is_empty() {
        line.push_str(&format!(", meets {}", s.meetings));
    }
    if let Some(at) = s.opens_at {
        line.push_str(&format!(", opens {}", at.to_rfc3339()));
    }
    if let Some(at) = s.closes_at {
        line.push_str(&format!(", closes {}", at.to_rfc3339()));
    }
    if let Some(commitment) = s.draw_commitment() {
        line.push_str(", opening by draw");
        if let Some(at) = s.entries_open_at {
            line.push_str(&format!(" (entries from {})", at.to_rfc3339()));
        }
        line.push_str(&format!(", commitment {commitment}"));
    }
    line
}

fn describe_detail(detail: &CourseDetail) -> String {
    let c = &detail.course;
    let at = |t: Option<DateTime<Utc>>| t.map_or("-".to_owned(), |t| t.to_rfc3339());
    let mut text = format!("course {}\n", c.course_id);
    text.push_str(&format!(
        "  seats {} ({} enrolled, {} left), waitlist {} of {}\n",
        c.capacity, c.enrolled, c.seats_left, c.waitlisted, c.waitlist_capacity
    ));
    text.push_str(&format!(
        "  opens {}, closes {}\n",
        at(c.opens_at),
        at(c.closes_at)
    ));
    text.push_str(&format!(
        "  {} credits, meets {}\n",
        c.credits,
        if c.meetings.is_empty() {
            "-"
        } else {
            &c.meetings
        }
    ));
    if let Some(draw) = &c.draw {
        text.push_str(&format!(
            "  opening {}, entries from {}, {} entrants\n  draw commitment {}\n",
            c.opening,
            at(c.entries_open_at),
            draw.entrants,
            draw.commitment
        ));
        match (&draw.seed, draw.drawn_at) {
            (Some(seed), Some(when)) => text.push_str(&format!(
                "  drawn {} with seed {seed}{}\n",
                when.to_rfc3339(),
                if draw.announced {
                    ""
                } else {
                    " (results not yet all sent)"
                }
            )),
            _ => text.push_str("  not drawn yet (the seed is revealed after the draw)\n"),
        }
    }
    text.push_str(&format!(
        "  enrolled: {}\n",
        detail.enrolled_students.join(" ")
    ));
    for (i, student) in detail.waitlist.iter().enumerate() {
        text.push_str(&format!("  waitlist {:>4}. {student}\n", i + 1));
    }
    for entrant in &detail.entrants {
        match (entrant.draw_position, &entrant.outcome) {
            (Some(rank), Some(outcome)) => text.push_str(&format!(
                "  draw {rank:>8}. {} {outcome}\n",
                entrant.student_id
            )),
            _ => text.push_str(&format!("  entered      {}\n", entrant.student_id)),
        }
    }
    text
}

fn describe_list(courses: &[CourseRow]) -> String {
    let mut text = format!(
        "{:<24} {:>8} {:>8} {:>10} {:>10}\n",
        "course", "seats", "enrolled", "seats left", "waitlisted"
    );
    for c in courses {
        text.push_str(&format!(
            "{:<24} {:>8} {:>8} {:>10} {:>5} of {:<4}\n",
            c.course_id, c.capacity, c.enrolled, c.seats_left, c.waitlisted, c.waitlist_capacity
        ));
    }
    text
}
