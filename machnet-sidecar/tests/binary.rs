//! End to end with the real `machnet` binary on kernel UDP: two sidecars on 127.0.0.1 and
//! 127.0.0.2, apps driven by the raw test client (tests/common).

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use machnet_channel::control::Response;
use machnet_channel::{CloseCode, RecordKind};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn attach(p: &Proc) -> RawClient {
    let c = RawClient::connect(&p.sock).unwrap();
    assert!(matches!(c.hello(), Response::Hello { .. }));
    c
}

#[test]
fn two_sidecar_processes_echo_over_kernel_udp_and_stop_on_sigterm() {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("bin-echo");
    let mut sa = Proc::start(A, 2, pool, &dir, &[]);
    let mut sb = Proc::start(B, 2, pool, &dir, &[]);
    let cb = attach(&sb);
    let server = cb.open_channel(None);
    assert_eq!(cb.listen(server.id, 5000), Response::Ok);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let echo = std::thread::spawn(move || echo_server(server, s2));

    let ca = attach(&sa);
    // Several channels (spread over both engines), each with its own flow.
    let mut chans: Vec<_> = (0..4).map(|_| ca.open_channel(None)).collect();
    let flows: Vec<u32> = chans.iter_mut().map(|c| c.connect(B, 5000).0).collect();
    for (k, (ch, &flow)) in chans.iter_mut().zip(&flows).enumerate() {
        for (i, len) in [1usize, 1472, 100_000, 8 << 20].into_iter().enumerate() {
            if k > 0 && len > 1 << 20 {
                continue;
            }
            let msg = pattern((k * 10 + i) as u64, len);
            ch.send(flow, &msg);
            let n = ch.expect_next();
            assert_eq!(n.kind, RecordKind::Message);
            assert!(n.payload == msg, "channel {k}: {len} bytes altered");
        }
    }
    let (ch, flow) = (&mut chans[0], flows[0]);
    ch.close_flow(flow);
    assert_eq!(ch.expect_next().kind, RecordKind::PeerClosed);
    let n = ch.expect_next();
    assert_eq!(
        (n.kind, code(&n)),
        (RecordKind::Closed, Some(CloseCode::Graceful))
    );

    // SIGTERM: clean exit, channels closed with Shutdown, socket removed.
    let status = sa.terminate();
    assert!(status.success(), "exit status {status}:\n{}", sa.log_text());
    assert_eq!(chans[1].wait_closed(WAIT), Some(CloseCode::Shutdown as u32));
    assert!(!sa.sock.exists(), "socket file removed");
    assert!(ca.hung_up(WAIT));
    let log = sa.log_text();
    assert!(log.contains("engine 0:"), "statistics are logged:\n{log}");
    stop.store(true, Ordering::SeqCst);
    echo.join().unwrap();
    assert!(sb.terminate().success());
}

#[test]
fn messages_arrive_despite_injected_loss_between_processes() {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("bin-loss");
    let loss = ["--test-drop-rate", "0.05", "--test-seed", "99"];
    let sa = Proc::start(A, 1, pool, &dir, &loss);
    let sb = Proc::start(B, 2, pool, &dir, &loss);
    let cb = attach(&sb);
    let server = cb.open_channel(None);
    assert_eq!(cb.listen(server.id, 5001), Response::Ok);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let echo = std::thread::spawn(move || echo_server(server, s2));
    let ca = attach(&sa);
    let mut ch = ca.open_channel(None);
    let (flow, _) = ch.connect(B, 5001);
    for (i, len) in [5usize, 9000, 1 << 20].into_iter().enumerate() {
        let msg = pattern(i as u64, len);
        ch.send(flow, &msg);
        let n = ch.expect_next();
        assert!(
            n.kind == RecordKind::Message && n.payload == msg,
            "{len} bytes"
        );
    }
    stop.store(true, Ordering::SeqCst);
    echo.join().unwrap();
    drop((sa, sb));
}

// Builds with the `dpdk` feature start the DPDK datapath instead.
#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_datapath_fails_at_start_with_a_clear_message() {
    let dir = temp_dir("bin-dpdk");
    let out = Command::new(MACHNET_BIN)
        .args(["--datapath", "dpdk", "--control-socket"])
        .arg(dir.join("m.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no DPDK support"), "{err}");
}

#[test]
fn bad_flags_exit_with_usage_errors() {
    let out = Command::new(MACHNET_BIN)
        .args(["--engines", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--engines"));
    let out = Command::new(MACHNET_BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--local-ip",
        "--udp-port-base",
        "--allow-user",
        "--idle-mode",
        "--config",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
