//! Tests of planning a window and of what an executed window changes.

use bytes::Bytes;

use super::window::Slot;
use super::*;
use crate::ingest::auth::Acl;
use crate::ingest::packet::Reason;
use crate::ingest::topics::Mapping;

fn publish(qos: u8, pkid: u16, topic: &str, payload: &[u8]) -> Work {
    Work::Publish(Publish {
        qos,
        pkid,
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        permit: None,
    })
}

fn plan(items: Vec<Work>, acl: &Acl, state: &mut ConnState) -> Plan {
    let mapping = Mapping::new(&[], true).expect("mapping");
    Plan::build(items, Client { client_id: "dev", identity: Some("dev") }, &mapping, acl, state)
}

#[test]
fn consecutive_raw_records_share_one_append() {
    let mut state = ConnState::default();
    let p = plan(
        vec![
            publish(1, 1, "weir/s/a", b"1"),
            publish(0, 0, "weir/s/b", b"2"),
            publish(1, 2, "weir/t/a", b"3"),
            publish(1, 3, "weir/s/c", b"4"),
        ],
        &Acl::new(&[]).expect("acl"),
        &mut state,
    );
    assert_eq!(p.streams.len(), 2);
    assert_eq!(p.streams[0].ops.len(), 1);
    assert_eq!(p.streams[0].ops[0].len(), 3);
    assert_eq!(p.len(), 4);
}

#[test]
fn refusals_are_decided_at_plan_time() {
    let mut state = ConnState::default();
    let acl = Acl::new(&[super::super::auth::AclEntry {
        identity: "*".into(),
        publish: vec!["weir/s/%c".into()],
    }])
    .expect("acl");
    let long_key = format!("weir/s/{}", "k".repeat(300));
    let p = plan(
        vec![
            publish(1, 1, "weir/s/other", b"x"),
            publish(1, 2, "nowhere", b"x"),
            publish(1, 3, &long_key, b"x"),
            publish(1, 4, "weir/s/$batch", b"not an envelope"),
            publish(1, 5, "weir/s/dev", b"ok"),
        ],
        &Acl::new(&[]).expect("open"),
        &mut state,
    );
    let reasons: Vec<Option<Reason>> = p
        .slots
        .iter()
        .map(|s| match s {
            Slot::Decided(o) => Some(o.reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            None,
            Some(Reason::TopicNameInvalid),
            Some(Reason::TopicNameInvalid),
            Some(Reason::PayloadFormatInvalid),
            None
        ]
    );
    let p = plan(vec![publish(1, 1, "weir/s/other", b"x")], &acl, &mut state);
    assert!(matches!(&p.slots[0], Slot::Decided(o) if o.reason == Reason::NotAuthorized));
}

#[test]
fn qos2_duplicates_are_acknowledged_without_an_append() {
    let mut state = ConnState::default();
    let acl = Acl::new(&[]).expect("acl");
    let p = plan(vec![publish(2, 9, "weir/s/k", b"x")], &acl, &mut state);
    assert!(matches!(p.slots[0], Slot::Record { qos2: Some(9), .. }));
    assert!(state.qos2_received.contains(&9));
    let p = plan(
        vec![publish(2, 9, "weir/s/k", b"x"), Work::PubRel(9), Work::PubRel(9)],
        &acl,
        &mut state,
    );
    assert!(p.streams.is_empty(), "the duplicate is not appended");
    let reasons: Vec<Reason> = p
        .slots
        .iter()
        .map(|s| match s {
            Slot::Decided(o) => o.reason,
            _ => Reason::UnspecifiedError,
        })
        .collect();
    assert_eq!(reasons, vec![Reason::Success, Reason::Success, Reason::PacketIdentifierNotFound]);
}

#[test]
fn a_failed_batch_blocks_later_ones_of_its_producer() {
    let mut state = ConnState::default();
    let done = Done {
        outcomes: Vec::new(),
        qos2_failed: vec![],
        batches: vec![(("s".into(), "p".into(), 5), false), (("s".into(), "p".into(), 6), false)],
    };
    done.apply(&mut state);
    assert_eq!(state.failed_batches.get(&("s".into(), "p".into())), Some(&5));
    let batch = weir_wire::encode_batch_to_vec(&weir_wire::OwnedBatch {
        producer_id: "p".into(),
        batch_seq: 6,
        records: vec![weir_wire::OwnedRecord::new("k", b"v".to_vec())],
    })
    .expect("batch");
    let acl = Acl::new(&[]).expect("acl");
    let p = plan(vec![publish(1, 1, "weir/s/$batch", &batch)], &acl, &mut state);
    assert!(
        matches!(&p.slots[0], Slot::Decided(o) if o.reason == Reason::ImplementationSpecificError)
    );
    Done {
        outcomes: vec![],
        qos2_failed: vec![],
        batches: vec![(("s".into(), "p".into(), 5), true)],
    }
    .apply(&mut state);
    assert!(state.failed_batches.is_empty());
}
