//! RVP score and election, with injected time.

use branchline_office::{
    Candidate, ClientKey, Election, LinkMedium, RvpState, elect, record_progress, score,
};

const STALL: u64 = 60_000;
const GIB: u64 = 1 << 30;

fn key(n: u8) -> ClientKey {
    let mut k = [0u8; 16];
    k[15] = n;
    k
}

fn cand(n: u8, medium: LinkMedium) -> Candidate {
    Candidate {
        client: key(n),
        online: true,
        uptime_s: 3600,
        cache_free_bytes: 10 * GIB,
        medium,
        vpn: false,
        weight: 0,
        pieces: 0,
    }
}

#[test]
fn score_formula() {
    let mut c = cand(1, LinkMedium::Wired);
    c.uptime_s = 5 * 3600 + 3599;
    c.cache_free_bytes = 7 * GIB + 5;
    c.pieces = 3;
    c.weight = 2;
    assert_eq!(score(&c), Some(2000 + 30 + 300 + 50 + 14));
    c.medium = LinkMedium::Unknown;
    assert_eq!(score(&c), Some(2000 + 30 + 150 + 50 + 14));
    c.medium = LinkMedium::Wifi;
    c.weight = -1;
    assert_eq!(score(&c), Some(-1000 + 30 + 50 + 14));
    // Caps.
    c.weight = 0;
    c.pieces = u32::MAX;
    c.uptime_s = u64::MAX;
    c.cache_free_bytes = u64::MAX;
    assert_eq!(score(&c), Some(1000 + 240 + 200));
    c.online = false;
    assert_eq!(score(&c), None);
    c.online = true;
    c.vpn = true;
    assert_eq!(score(&c), None);
}

#[test]
fn elects_best_then_keeps_it() {
    let cands = vec![cand(1, LinkMedium::Wifi), cand(2, LinkMedium::Wired)];
    let mut cur = None;
    assert_eq!(
        elect(&mut cur, &cands, None, 1000, STALL, false),
        Election::Elected {
            client: key(2),
            replaced: None
        }
    );
    assert_eq!(
        cur,
        Some(RvpState {
            client: key(2),
            elected_ms: 1000,
            progress_ms: 1000,
            pieces: 0
        })
    );
    // A better newcomer does not unseat a progressing RVP.
    let mut better = cand(3, LinkMedium::Wired);
    better.weight = 5;
    let mut cands2 = cands.clone();
    cands2.push(better);
    record_progress(&mut cur, key(2), 4, 50_000);
    assert_eq!(
        elect(&mut cur, &cands2, None, 100_000, STALL, false),
        Election::Kept(key(2))
    );
    assert_eq!(cur.as_ref().unwrap().pieces, 4);
    assert_eq!(cur.as_ref().unwrap().progress_ms, 50_000);
}

#[test]
fn stalled_rvp_is_replaced() {
    let cands = vec![cand(1, LinkMedium::Wifi), cand(2, LinkMedium::Wired)];
    let mut cur = None;
    elect(&mut cur, &cands, None, 0, STALL, false);
    assert_eq!(
        elect(&mut cur, &cands, None, STALL, STALL, false),
        Election::Kept(key(2))
    );
    // Progress that is not growth does not count.
    record_progress(&mut cur, key(2), 0, STALL);
    // Another client's progress does not count either.
    record_progress(&mut cur, key(1), 9, STALL);
    assert_eq!(cur.as_ref().unwrap().progress_ms, 0);
    assert_eq!(
        elect(&mut cur, &cands, None, STALL + 1, STALL, false),
        Election::Elected {
            client: key(1),
            replaced: Some(key(2))
        }
    );
    assert_eq!(cur.as_ref().unwrap().elected_ms, STALL + 1);
}

#[test]
fn stalled_only_candidate_is_elected_afresh() {
    let cands = vec![cand(7, LinkMedium::Wired)];
    let mut cur = None;
    elect(&mut cur, &cands, None, 0, STALL, false);
    assert_eq!(
        elect(&mut cur, &cands, None, 2 * STALL, STALL, false),
        Election::Elected {
            client: key(7),
            replaced: Some(key(7))
        }
    );
    assert_eq!(cur.as_ref().unwrap().elected_ms, 2 * STALL);
}

#[test]
fn offline_or_missing_rvp_is_replaced() {
    let mut cands = vec![cand(1, LinkMedium::Wifi), cand(2, LinkMedium::Wired)];
    let mut cur = None;
    elect(&mut cur, &cands, None, 0, STALL, false);
    cands[1].online = false;
    assert_eq!(
        elect(&mut cur, &cands, None, 10, STALL, false),
        Election::Elected {
            client: key(1),
            replaced: Some(key(2))
        }
    );
    // Gone from the list.
    let only = vec![cand(3, LinkMedium::Wifi)];
    assert_eq!(
        elect(&mut cur, &only, None, 20, STALL, false),
        Election::Elected {
            client: key(3),
            replaced: Some(key(1))
        }
    );
    // Nobody left.
    assert_eq!(
        elect(&mut cur, &[], None, 30, STALL, false),
        Election::NoCandidate
    );
    assert_eq!(cur, None);
}

#[test]
fn override_wins_when_eligible() {
    let mut cands = vec![cand(1, LinkMedium::Wifi), cand(2, LinkMedium::Wired)];
    let mut cur = None;
    elect(&mut cur, &cands, None, 0, STALL, false);
    assert_eq!(
        elect(&mut cur, &cands, Some(key(1)), 10, STALL, false),
        Election::Elected {
            client: key(1),
            replaced: Some(key(2))
        }
    );
    assert_eq!(
        elect(&mut cur, &cands, Some(key(1)), 20, STALL, false),
        Election::Kept(key(1))
    );
    // Even stalled, the override stays.
    assert_eq!(
        elect(&mut cur, &cands, Some(key(1)), 10 * STALL, STALL, false),
        Election::Kept(key(1))
    );
    // An override that is offline, on VPN or absent is ignored.
    cands[0].online = false;
    assert_eq!(
        elect(&mut cur, &cands, Some(key(1)), 10 * STALL, STALL, false),
        Election::Elected {
            client: key(2),
            replaced: Some(key(1))
        }
    );
    cands[0].online = true;
    cands[0].vpn = true;
    assert_eq!(
        elect(&mut cur, &cands, Some(key(1)), 10 * STALL + 1, STALL, false),
        Election::Kept(key(2))
    );
    assert_eq!(
        elect(&mut cur, &cands, Some(key(9)), 10 * STALL + 2, STALL, false),
        Election::Kept(key(2))
    );
}

#[test]
fn vpn_is_never_elected() {
    let mut v = cand(1, LinkMedium::Wired);
    v.vpn = true;
    v.weight = 100;
    let mut cur = None;
    assert_eq!(
        elect(&mut cur, &[v.clone()], None, 0, STALL, false),
        Election::NoCandidate
    );
    assert_eq!(
        elect(&mut cur, &[v.clone()], Some(key(1)), 0, STALL, false),
        Election::NoCandidate
    );
    let w = cand(2, LinkMedium::Wifi);
    assert_eq!(
        elect(&mut cur, &[v.clone(), w.clone()], None, 0, STALL, false),
        Election::Elected {
            client: key(2),
            replaced: None
        }
    );
    // An RVP that moves onto a VPN is replaced.
    let mut cur = Some(RvpState {
        client: key(1),
        elected_ms: 0,
        progress_ms: 0,
        pieces: 0,
    });
    assert_eq!(
        elect(&mut cur, &[v, w], None, 1, STALL, false),
        Election::Elected {
            client: key(2),
            replaced: Some(key(1))
        }
    );
}

#[test]
fn paused_link_does_not_stall() {
    let cands = vec![cand(1, LinkMedium::Wifi), cand(2, LinkMedium::Wired)];
    let mut cur = None;
    elect(&mut cur, &cands, None, 0, STALL, false);
    // Window closed for hours: kept.
    assert_eq!(
        elect(&mut cur, &cands, None, 100 * STALL, STALL, true),
        Election::Kept(key(2))
    );
    // The window opens: a full stall time from the last paused check.
    assert_eq!(
        elect(&mut cur, &cands, None, 101 * STALL, STALL, false),
        Election::Kept(key(2))
    );
    assert_eq!(
        elect(&mut cur, &cands, None, 101 * STALL + 1, STALL, false),
        Election::Elected {
            client: key(1),
            replaced: Some(key(2))
        }
    );
    // Paused does not keep an offline RVP.
    let mut offline = cands.clone();
    offline[0].online = false;
    assert_eq!(
        elect(&mut cur, &offline, None, 102 * STALL, STALL, true),
        Election::Elected {
            client: key(2),
            replaced: Some(key(1))
        }
    );
}

#[test]
fn ties_go_to_lowest_client_id() {
    let cands = vec![
        cand(9, LinkMedium::Wired),
        cand(3, LinkMedium::Wired),
        cand(5, LinkMedium::Wired),
    ];
    let mut cur = None;
    assert_eq!(
        elect(&mut cur, &cands, None, 0, STALL, false),
        Election::Elected {
            client: key(3),
            replaced: None
        }
    );
    let mut hi = [0u8; 16];
    hi[0] = 1;
    let mut a = cand(0, LinkMedium::Wired);
    a.client = hi;
    let b = cand(200, LinkMedium::Wired);
    let mut cur = None;
    assert_eq!(
        elect(&mut cur, &[a, b], None, 0, STALL, false),
        Election::Elected {
            client: key(200),
            replaced: None
        }
    );
}

#[test]
fn pieces_held_attract_the_election() {
    let mut holder = cand(8, LinkMedium::Wifi);
    holder.pieces = 50;
    let fresh = cand(1, LinkMedium::Wired);
    let mut cur = None;
    assert_eq!(
        elect(&mut cur, &[fresh, holder], None, 0, STALL, false),
        Election::Elected {
            client: key(8),
            replaced: None
        }
    );
    assert_eq!(cur.unwrap().pieces, 50);
}
