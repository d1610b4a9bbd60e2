//! Job specs inside bincode records and commands, as JSON text.
//!
//! The state and the Raft log are bincode, which is compact but not
//! self-describing: a struct that gains a field cannot read its old bytes.
//! Job specs grow with every driver and placement feature, so they travel
//! as one JSON string inside the bincode record: a field added later with
//! `#[serde(default)]` reads old specs without a new record format. Specs
//! are small and written once per job version, so the cost is nil.
//! Use as `#[serde(with = "crate::machine::spec_codec")]` on a `JobSpec` field.

use herd_api::job::JobSpec;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// Writes `spec` as a JSON string.
pub fn serialize<S: Serializer>(spec: &JobSpec, serializer: S) -> Result<S::Ok, S::Error> {
    let text = serde_json::to_string(spec).map_err(S::Error::custom)?;
    serializer.serialize_str(&text)
}

/// Reads a spec written by [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<JobSpec, D::Error> {
    let text = String::deserialize(deserializer)?;
    serde_json::from_str(&text).map_err(|e| D::Error::custom(format!("job spec: {e}")))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::testkit::spec;
    use herd_api::job::{JobSpec, JobType};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder {
        #[serde(with = "super")]
        spec: JobSpec,
        after: u64,
    }

    #[test]
    fn specs_round_trip_through_bincode_and_tolerate_missing_new_fields() {
        let mut job = spec("a", JobType::Service, 2);
        job.task.config.insert("kv_blocks".into(), "64".into());
        let holder = Holder {
            spec: job,
            after: 7,
        };
        let bytes = herd_consensus::codec::encode(&holder).expect("encode");
        let back: Holder = herd_consensus::codec::decode(&bytes, "test").expect("decode");
        assert_eq!(back, holder);

        // A spec written before `config` (and `placement`) existed still reads.
        let mut old = serde_json::to_value(&holder.spec).expect("json");
        old["task"].as_object_mut().expect("task").remove("config");
        old.as_object_mut().expect("spec").remove("placement");
        #[derive(Serialize)]
        struct OldHolder {
            spec: String,
            after: u64,
        }
        let bytes = herd_consensus::codec::encode(&OldHolder {
            spec: old.to_string(),
            after: 7,
        })
        .expect("encode");
        let back: Holder = herd_consensus::codec::decode(&bytes, "test").expect("decode");
        assert!(back.spec.task.config.is_empty());
        assert_eq!(back.spec.name, "a");
    }
}
