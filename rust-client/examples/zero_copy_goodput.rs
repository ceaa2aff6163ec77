//! Zero-copy vs copying messages through two real sidecars in this process (kernel UDP on
//! 127.0.0.1/127.0.0.2): one sender streams messages of one size to one receiver; prints
//! goodput and CPU time per GB (the two application threads, and the whole process, sidecars
//! included) for each mode, interleaved and repeated.
//!
//! The application *produces* each message (fills it) and *consumes* it (reads every word):
//! copying mode fills its own buffer and `send`s it (one more copy), then `recv_into`s (one
//! more copy) and reads; zero-copy mode fills the loan in place and reads the borrowed view.
//!
//! `cargo run --release -p machnet-client --example zero_copy_goodput [MiB per run] [repeats]`

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use machnet::Machnet;
use machnet_sidecar::testing::LoopbackSidecars;

const PORT: u16 = 999;

fn cpu(who: i32) -> Duration {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn produce(buf: &mut [u8], seq: u64) {
    buf.fill(seq as u8);
}

fn consume(buf: &[u8]) -> u64 {
    // SAFETY: any bytes are a valid u64.
    let (head, words, tail) = unsafe { buf.align_to::<u64>() };
    words.iter().fold(0u64, |a, w| a ^ w)
        ^ head.iter().chain(tail).fold(0u64, |a, &b| a ^ u64::from(b))
}

struct Run {
    secs: f64,
    app_cpu: Duration,
    proc_cpu: Duration,
}

fn run(p: &LoopbackSidecars, size: usize, count: usize, zc: bool) -> Run {
    let ma = Machnet::attach_at(p.socket(0)).unwrap();
    let mut rx = ma.open_channel(None).unwrap();
    rx.listen(PORT).unwrap();
    let mb = Machnet::attach_at(p.socket(1)).unwrap();
    let mut tx = mb.open_channel(None).unwrap();
    let flow = tx.connect(Ipv4Addr::new(127, 0, 0, 1), PORT).unwrap();
    let proc0 = cpu(libc::RUSAGE_SELF);
    let t0 = Instant::now();
    let receiver = std::thread::spawn(move || {
        let c0 = cpu(libc::RUSAGE_THREAD);
        let mut buf = vec![0u8; size];
        let mut x = 0u64;
        for _ in 0..count {
            if zc {
                let (_, view) = rx.recv_zc().unwrap();
                x ^= consume(&view);
            } else {
                let (_, n) = rx.recv_into(&mut buf).unwrap();
                x ^= consume(&buf[..n]);
            }
        }
        std::hint::black_box(x);
        (cpu(libc::RUSAGE_THREAD) - c0, rx)
    });
    let c0 = cpu(libc::RUSAGE_THREAD);
    let mut buf = vec![0u8; size];
    for i in 0..count {
        if zc {
            let mut loan = tx.loan(&flow, size).unwrap();
            produce(&mut loan, i as u64);
            loan.commit(size).unwrap();
        } else {
            produce(&mut buf, i as u64);
            tx.send(&flow, &buf).unwrap();
        }
    }
    let tx_cpu = cpu(libc::RUSAGE_THREAD) - c0;
    let (rx_cpu, _rx) = receiver.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    Run {
        secs,
        app_cpu: tx_cpu + rx_cpu,
        proc_cpu: cpu(libc::RUSAGE_SELF) - proc0,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let p = LoopbackSidecars::start(
        "zc-goodput",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
        1,
    );
    println!("size      mode  goodput_Gbit/s  app_cpu_s/GB  process_cpu_s/GB  (median of {repeats}, {mib} MiB per run)");
    for size in [8 << 10, 64 << 10, 1 << 20, 8 << 20] {
        let count = ((mib << 20) / size).max(8);
        let gb = (count * size) as f64 / 1e9;
        let mut res: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..repeats {
            for zc in [false, true] {
                let r = run(&p, size, count, zc);
                res[zc as usize].push((
                    gb * 8.0 / r.secs,
                    r.app_cpu.as_secs_f64() / gb,
                    r.proc_cpu.as_secs_f64() / gb,
                ));
            }
        }
        for (zc, v) in res.iter_mut().enumerate() {
            let med = |f: fn(&(f64, f64, f64)) -> f64, v: &mut Vec<(f64, f64, f64)>| {
                let mut xs: Vec<f64> = v.iter().map(f).collect();
                xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
                xs[xs.len() / 2]
            };
            println!(
                "{:>8}  {:>4}  {:>14.2}  {:>12.3}  {:>16.3}",
                size,
                if zc == 1 { "zc" } else { "copy" },
                med(|r| r.0, v),
                med(|r| r.1, v),
                med(|r| r.2, v)
            );
        }
    }
}
