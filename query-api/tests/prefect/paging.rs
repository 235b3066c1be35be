//! Paging walks every match once, with no gaps and no repeats.

use super::*;

#[tokio::test]
async fn paging_walks_thousands_of_events_with_no_gaps_and_no_repeats() {
    let mut h = Harness::start("qa_paging", 2, Settings::default()).await;
    h.load(5, 40).await;
    // Thousands of events of one tenant, many sharing the same `occurred` (ties are where
    // keyset paging goes wrong), some resent with the same id.
    let t = h.tenants[0].tenant;
    let at = h.base + DAY;
    let rows: Vec<flowhouse_schema::rows::EventRow> = (0..4000)
        .map(|i| Ev {
            tenant: t,
            id: Uuid::new_v4(),
            occurred: at + (i / 7) as i64 * 1_000,
            event: "bulk.thing.happened".into(),
            resource: vec![("prefect.resource.id".into(), format!("bulk.{}", i % 13))],
            related: vec![],
            payload: json!({"i": i}),
            received: at,
        })
        .map(|e| e.row())
        .collect();
    common::insert_events(&h.client, &rows).await;
    common::insert_events(&h.client, &rows[..500]).await;
    for (order, limit) in [("ASC", 50), ("DESC", 200), ("ASC", 23)] {
        let filter = json!({"occurred": {"since": rfc3339(at - HOUR), "until": rfc3339(at + HOUR)}, "event": {"prefix": ["bulk."]}, "order": order});
        let (total, events) = walk(&h, &h.tenants[0].key, t, filter, limit).await;
        assert_eq!(total, 4000);
        let got = ids(&events);
        let unique: BTreeSet<&String> = got.iter().collect();
        assert_eq!(got.len(), 4000, "{order} {limit}: every event once");
        assert_eq!(unique.len(), 4000, "{order} {limit}: no repeats");
        let expected: BTreeSet<String> = rows.iter().map(|r| r.id.to_string()).collect();
        assert_eq!(
            unique.into_iter().cloned().collect::<BTreeSet<_>>(),
            expected
        );
        let times: Vec<i64> = events.iter().map(|e| micros(&e["occurred"])).collect();
        assert!(times.windows(2).all(|w| if order == "ASC" {
            w[0] <= w[1]
        } else {
            w[0] >= w[1]
        }));
    }
    h.finish().await;
}
