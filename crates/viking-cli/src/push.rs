//! `viking push`: new code was pushed; restart the daemonized, non-static
//! jobs whose image changed, rolling, with progress as it goes.

use clap::Args;
use viking_client::api::{PushLine, PushRequest};
use viking_client::Client;

use crate::Failure;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Only jobs of these images (default: every image).
    pub images: Vec<String>,
    /// Restart every non-static job, even with an unchanged image.
    #[arg(long)]
    pub all: bool,
    /// How many jobs restart at once.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Pull each image on its host first (where a registry serves it).
    #[arg(long)]
    pub pull: bool,
    /// Seconds each new container must stay up (and healthy) before the next
    /// (0 to 86400).
    #[arg(long, default_value_t = 3.0, value_parser = parse_settle)]
    pub settle: f64,
    /// One JSON object per line, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// A settle time in seconds: a number from 0 to a day.
fn parse_settle(s: &str) -> Result<f64, String> {
    let max = viking_client::api::MAX_WAIT_SECONDS;
    match s.parse::<f64>() {
        Ok(v) if (0.0..=max as f64).contains(&v) => Ok(v),
        Ok(_) => Err(format!("must be 0 to {max} seconds")),
        Err(_) => Err(format!("{s:?} is not a number of seconds")),
    }
}

fn short(id: &Option<String>) -> String {
    id.as_deref()
        .map(|i| i.trim_start_matches("sha256:").chars().take(12).collect())
        .unwrap_or_else(|| "?".to_string())
}

pub async fn push(c: &Client, a: PushArgs) -> Result<i32, Failure> {
    let req = PushRequest {
        images: a.images,
        all: a.all,
        parallel: a.parallel,
        pull: a.pull,
        settle_ms: Some((a.settle * 1000.0) as u64),
    };
    let mut lines = c.push(&req).await?;
    loop {
        let Some(line) = lines.next_line().await? else {
            return Err(Failure::new(
                1,
                "the server closed the connection during the push",
            ));
        };
        if a.json {
            println!("{line}");
        }
        let parsed: PushLine = serde_json::from_str(&line)
            .map_err(|e| Failure::new(1, format!("unexpected answer from the server: {e}")))?;
        match parsed {
            PushLine::Event(e) => {
                if !a.json {
                    let what = match e.event.as_str() {
                        "restarting" => format!(
                            "restarting: {} -> {}",
                            short(&e.old_image_id),
                            short(&e.new_image_id)
                        ),
                        "restarted" => format!("running on {}", short(&e.new_image_id)),
                        "failed" => {
                            format!("FAILED: {}", e.message.clone().unwrap_or_default())
                        }
                        other => other.to_string(),
                    };
                    println!(
                        "{} ({}): {what}",
                        e.job,
                        if e.host.is_empty() { "-" } else { &e.host }
                    );
                }
            }
            PushLine::Done(s) => {
                if let Some(f) = &s.failed {
                    return Err(Failure::new(
                        1,
                        format!(
                            "push stopped: job {} failed on {}: {}; {} job(s) not pushed",
                            f.job,
                            f.host,
                            f.message.clone().unwrap_or_default(),
                            s.untouched.len()
                        ),
                    ));
                }
                if !a.json {
                    println!(
                        "pushed: {} restarted, {} unchanged, {} static left alone",
                        s.restarted.len(),
                        s.unchanged.len(),
                        s.static_jobs.len()
                    );
                }
                return Ok(0);
            }
            PushLine::Error(e) => return Err(Failure::new(1, e.error)),
        }
    }
}
