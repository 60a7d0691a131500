//! `branchline get CONTENT [--out PATH] [--timeout SECS]`: asks the local client daemon
//! (Unix socket in its data directory) for a content item, shows progress, prints the
//! verified file's path.

use std::path::PathBuf;
use std::time::Duration;

use branchline_client::local::{LocalReply, LocalRequest, SOCKET};
use branchline_client::platform::local_socket;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::fail::{Fail, exit};

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// A content id (64 hex digits) or name[@version] (latest version when omitted).
    pub content: String,
    /// Copy the verified file here (default: print the path of the cached copy, which must
    /// not be modified).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// The client daemon's data directory.
    #[arg(long, env = "BRANCHLINE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// No progress bar; print one JSON object at the end.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds (default: wait as long as the download goes on).
    /// The daemon keeps fetching in the background; `get` again picks it up.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

pub async fn run(args: GetArgs, config_data_dir: Option<PathBuf>) -> Result<(), Fail> {
    let pb = if args.json {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb
    };
    let Some(secs) = args.timeout else {
        return get(&args, config_data_dir, &pb).await;
    };
    match tokio::time::timeout(Duration::from_secs(secs), get(&args, config_data_dir, &pb)).await {
        Ok(result) => result,
        Err(_) => {
            pb.abandon();
            let had = match pb.length() {
                Some(size) if size > 0 => {
                    format!(" ({} of {size} bytes verified so far)", pb.position())
                }
                _ => String::new(),
            };
            Err(Fail::new(
                exit::FAILURE,
                format!(
                    "gave up on {} after {secs} s (--timeout){had}; the client daemon keeps \
                     fetching it, and `branchline get` again picks up where it is",
                    args.content
                ),
            ))
        }
    }
}

async fn get(
    args: &GetArgs,
    config_data_dir: Option<PathBuf>,
    pb: &ProgressBar,
) -> Result<(), Fail> {
    let dir = args.data_dir.clone().or(config_data_dir).ok_or_else(|| {
        Fail::new(
            exit::USAGE,
            "--data-dir is required (the client daemon's data directory, or set client.data_dir in the config file)",
        )
    })?;
    let socket = dir.join(SOCKET);
    let stream = local_socket::connect(&socket).await.map_err(|e| {
        Fail::new(
            exit::FAILURE,
            format!(
                "cannot reach the client daemon at {} ({e}): is `branchline client --data-dir {}` running?",
                socket.display(),
                dir.display()
            ),
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(&LocalRequest {
        get: args.content.clone(),
    })
    .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line)
        .await
        .map_err(|e| Fail::new(exit::FAILURE, format!("writing to the client daemon: {e}")))?;
    let mut lines = BufReader::new(r).lines();
    loop {
        let Some(line) = lines.next_line().await.map_err(|e| {
            Fail::new(
                exit::FAILURE,
                format!("reading from the client daemon: {e}"),
            )
        })?
        else {
            return Err(Fail::new(
                exit::FAILURE,
                "the client daemon closed the connection without an answer",
            ));
        };
        let reply: LocalReply = serde_json::from_str(&line).map_err(|e| {
            Fail::new(
                exit::FAILURE,
                format!("the client daemon sent {line:?}: {e}"),
            )
        })?;
        match reply {
            LocalReply::Progress(p) => {
                pb.set_length(p.size);
                pb.set_position(p.have_bytes);
                let mut msg = format!(
                    "{} {} source{}{}",
                    if p.name.is_empty() {
                        &args.content
                    } else {
                        &p.name
                    },
                    p.sources,
                    if p.sources == 1 { "" } else { "s" },
                    if p.reading_origin { " +origin" } else { "" }
                );
                if let Some(why) = &p.paused {
                    msg.push_str(&format!(" (paused: {why})"));
                }
                pb.set_message(msg);
            }
            LocalReply::Error(e) => {
                pb.abandon();
                return Err(Fail::new(
                    exit::FAILURE,
                    format!("cannot get {}: {e}", args.content),
                ));
            }
            LocalReply::Done(d) => {
                pb.finish_and_clear();
                let path = match &args.out {
                    Some(out) => {
                        let (from, to) = (d.path.clone(), out.clone());
                        tokio::task::spawn_blocking(move || copy_out(&from, &to))
                            .await
                            .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))??;
                        out.clone()
                    }
                    None => d.path.clone(),
                };
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "content_id": d.content_id,
                            "size": d.size,
                            "path": path,
                            "from_peers": d.from_peers,
                            "from_origin": d.from_origin,
                            "from_server": d.from_server,
                        })
                    );
                } else {
                    println!("{}", path.display());
                }
                return Ok(());
            }
        }
    }
}

/// Copies via a temporary file in the target directory and renames, so `out` is either
/// absent or the whole verified file.
fn copy_out(from: &std::path::Path, to: &std::path::Path) -> Result<(), Fail> {
    let err =
        |e: std::io::Error| Fail::new(exit::FAILURE, format!("cannot write {}: {e}", to.display()));
    let tmp = to.with_extension(format!("branchline-tmp-{}", std::process::id()));
    std::fs::copy(from, &tmp).map_err(err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}
