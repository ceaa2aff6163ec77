//! DPDK (feature `dpdk`): clear errors for a bad EAL argument, a missing port and a second EAL
//! initialisation. EAL initialises once per process, hence one test per file.

#[cfg(feature = "dpdk")]
mod dpdk_common;

#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_errors() {
    eprintln!(
        "skipped: built without the `dpdk` feature (cargo test -p machnet-sidecar --features dpdk)"
    );
}

#[cfg(feature = "dpdk")]
#[test]
fn dpdk_errors() {
    use machnet_sidecar::datapath::dpdk::{DpdkError, Eal, Port};

    // A bad argument is refused with EAL's EINVAL text, and EAL may be initialised afterwards.
    let e = Eal::init(["--no-pci", "--definitely-not-an-eal-option"]).unwrap_err();
    eprintln!("bad argument: {e}");
    match &e {
        DpdkError::EalInit { code, message } => {
            assert_eq!(*code, 22, "EINVAL");
            assert!(!message.is_empty());
        }
        other => panic!("unexpected error {other:?}"),
    }
    let e = Eal::init(["bad\0arg"]).unwrap_err();
    assert!(matches!(e, DpdkError::InvalidArgument(_)), "{e}");

    let Some(eal) = dpdk_common::init_eal(&[]) else {
        return;
    };
    assert_eq!(eal.port_count(), 0);
    let e = eal.find_port("net_ring7").unwrap_err();
    eprintln!("missing port: {e}");
    assert!(matches!(e, DpdkError::NoSuchPort(..)));
    assert!(e.to_string().contains("net_ring7"));
    assert!(matches!(eal.find_port("3"), Err(DpdkError::NoSuchPort(..))));
    assert!(matches!(
        Port::open(&eal, 5),
        Err(DpdkError::NoSuchPort(..))
    ));

    // Once per process, even after the first handle is gone.
    assert_eq!(
        Eal::init(dpdk_common::eal_args(&[])).unwrap_err(),
        DpdkError::AlreadyInitialized
    );
    drop(eal);
    assert_eq!(
        Eal::init(dpdk_common::eal_args(&[])).unwrap_err(),
        DpdkError::AlreadyInitialized
    );
}
