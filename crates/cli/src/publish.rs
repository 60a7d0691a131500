//! `branchline connector publish` and `connector content list`: the catalogue over small
//! messages only (the connector's row of the port table: to the server's 34323, answers
//! back to the connector's 34320).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use branchline_store::{PieceMap, PieceSize};
use branchline_wire::Body;
use branchline_wire::msg::{
    ContentList, ContentMeta, ListContent, PublishBegin, PublishChunk, PublishCommit,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::args::PublishArgs;
use crate::connector::Connector;
use crate::fail::{Fail, exit};

/// Bytes of piece map per chunk (the server's `catalogue::CHUNK`).
const CHUNK: usize = 1024;
/// Chunk messages in flight at once.
const IN_FLIGHT: usize = 32;

fn bar(total: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// Downloads `url` to a temporary file so it can be hashed (the connector must compute
/// the hash itself: the catalogue trusts nobody else's).
async fn fetch_url(url: &str, quiet: bool) -> Result<(tempfile::TempPath, u64), Fail> {
    let origin = branchline_origin::Origin::parse(url)
        .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    let size = origin
        .size()
        .await
        .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    let (mut file, tmp) = tempfile::Builder::new()
        .prefix("branchline-publish-")
        .tempfile()
        .map_err(|e| {
            Fail::new(
                exit::FAILURE,
                format!("cannot create a temporary file: {e}"),
            )
        })?
        .into_parts();
    let pb = bar(size, "downloading", quiet);
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(8 << 20);
        let bytes = origin
            .read_range(offset, len)
            .await
            .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
        std::io::Write::write_all(&mut file, &bytes)
            .map_err(|e| Fail::new(exit::FAILURE, format!("writing the temporary copy: {e}")))?;
        offset += len;
        pb.set_position(offset);
    }
    pb.finish_and_clear();
    Ok((tmp, size))
}

fn hash(path: &Path, piece_size: PieceSize, quiet: bool) -> Result<PieceMap, Fail> {
    let size = std::fs::metadata(path)
        .map_err(|e| {
            Fail::new(
                exit::FAILURE,
                format!("cannot read {}: {e}", path.display()),
            )
        })?
        .len();
    let pb = bar(size, "hashing", quiet);
    let map = PieceMap::from_file(path, piece_size, |done, _| pb.set_position(done))
        .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    pb.finish_and_clear();
    Ok(map)
}

/// What a publish did.
pub struct Outcome {
    pub id: branchline_store::ContentId,
    pub meta: ContentMeta,
    /// False when the same bytes were already published.
    pub new_content: bool,
}

/// `connector publish`: publishes and prints the content id (or JSON).
pub async fn publish(c: Connector, args: PublishArgs) -> Result<(), Fail> {
    let json = args.json;
    let o = publish_outcome(Arc::new(c), &args).await?;
    let (id, meta, new_content) = (o.id, o.meta, o.new_content);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "content_id": id.to_hex(),
                "name": meta.name,
                "version": meta.version,
                "size": meta.size,
                "origin": meta.origin,
                "piece_size": meta.piece_size,
                "new": new_content,
            })
        );
    } else {
        println!("{}", id.to_hex());
        eprintln!(
            "{} {}@{} ({} bytes, origin {})",
            if new_content {
                "published"
            } else {
                "already published:"
            },
            meta.name,
            meta.version,
            meta.size,
            meta.origin
        );
    }
    Ok(())
}

/// Hashes, uploads the metadata and piece map, commits. Quiet when `args.json`.
pub async fn publish_outcome(c: Arc<Connector>, args: &PublishArgs) -> Result<Outcome, Fail> {
    let piece_size = PieceSize::new(args.piece_size)
        .map_err(|e| Fail::new(exit::USAGE, format!("--piece-size: {e}")))?;
    let is_url = args.source.starts_with("http://") || args.source.starts_with("https://");
    let quiet = args.json;
    let (map, default_origin, file_name) = if is_url {
        let (tmp, _) = fetch_url(&args.source, quiet).await?;
        let map = hash(&tmp, piece_size, quiet)?;
        let name = args
            .source
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("package")
            .to_owned();
        (map, args.source.clone(), name)
    } else {
        let path: PathBuf = std::fs::canonicalize(&args.source)
            .map_err(|e| Fail::new(exit::FAILURE, format!("cannot read {}: {e}", args.source)))?;
        let p = path.clone();
        let map = tokio::task::spawn_blocking(move || hash(&p, piece_size, quiet))
            .await
            .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))??;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "package".into());
        (map, path.display().to_string(), name)
    };
    let id = map.id();
    let meta = ContentMeta {
        content_id: id.as_bytes().to_vec(),
        name: args.name.clone().unwrap_or(file_name),
        version: args.version.clone(),
        size: map.size(),
        origin: args.origin.clone().unwrap_or(default_origin),
        piece_size: piece_size.bytes(),
        published_ms: 0,
        complete_holders: 0,
        server_holds: false,
    };
    let encoded = Arc::new(map.encode());
    let begun = c
        .call(Body::PublishBegin(PublishBegin {
            meta: Some(meta.clone()),
            map_len: encoded.len() as u32,
        }))
        .await?;
    let needs_map = match begun {
        Body::Published(p) => p.needs_map,
        other => return Err(crate::connector::unexpected("PublishBegin", &other)),
    };
    let mut new_content = false;
    if needs_map {
        let pb = bar(encoded.len() as u64, "uploading piece map", quiet);
        let mut set = JoinSet::new();
        let mut offsets = (0..encoded.len()).step_by(CHUNK);
        let mut done = 0u64;
        loop {
            while set.len() < IN_FLIGHT {
                let Some(off) = offsets.next() else { break };
                let (c, encoded) = (c.clone(), encoded.clone());
                let content_id = id.as_bytes().to_vec();
                set.spawn(async move {
                    let end = (off + CHUNK).min(encoded.len());
                    let chunk = PublishChunk {
                        content_id,
                        offset: off as u32,
                        data: encoded[off..end].to_vec(),
                    };
                    c.call(Body::PublishChunk(chunk))
                        .await
                        .map(|_| (end - off) as u64)
                });
            }
            match set.join_next().await {
                None => break,
                Some(Ok(Ok(n))) => {
                    done += n;
                    pb.set_position(done);
                }
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(Fail::new(exit::FAILURE, e.to_string())),
            }
        }
        pb.finish_and_clear();
        match c
            .call(Body::PublishCommit(PublishCommit {
                content_id: id.as_bytes().to_vec(),
            }))
            .await?
        {
            Body::Published(p) => new_content = p.new_content,
            other => return Err(crate::connector::unexpected("PublishCommit", &other)),
        }
    }
    Ok(Outcome {
        id,
        meta,
        new_content,
    })
}

/// The whole catalogue, page by page.
pub async fn list(c: &Connector) -> Result<Vec<ContentMeta>, Fail> {
    let mut items = Vec::new();
    loop {
        let page = match c
            .call(Body::ListContent(ListContent {
                offset: items.len() as u32,
            }))
            .await?
        {
            Body::ContentList(ContentList { items: page, total }) => (page, total),
            other => return Err(crate::connector::unexpected("ListContent", &other)),
        };
        let (page, total) = page;
        let empty = page.is_empty();
        items.extend(page);
        if items.len() as u32 >= total || empty {
            return Ok(items);
        }
    }
}

pub fn print_list(items: &[ContentMeta], json: bool) {
    if json {
        let v: Vec<serde_json::Value> = items
            .iter()
            .map(|m| {
                serde_json::json!({
                    "content_id": hex::encode(&m.content_id),
                    "name": m.name,
                    "version": m.version,
                    "size": m.size,
                    "origin": m.origin,
                    "piece_size": m.piece_size,
                    "published_ms": m.published_ms,
                    "complete_holders": m.complete_holders,
                    "server_holds": m.server_holds,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:<24} {:<10} {:>12} {:>8}  {:<64}  ORIGIN",
        "NAME", "VERSION", "SIZE", "HOLDERS", "CONTENT ID"
    );
    for m in items {
        println!(
            "{:<24} {:<10} {:>12} {:>8}  {:<64}  {}",
            m.name,
            m.version,
            m.size,
            m.complete_holders,
            hex::encode(&m.content_id),
            m.origin
        );
    }
}
