//! What the FT and MEND tests share: the committed fixtures and the request they edit.

use std::path::PathBuf;

use kedit_editing::EditRequest;

pub fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(p)
}

/// "The capital of France is" Paris → Rome.
pub fn request() -> EditRequest {
    EditRequest {
        prompt: "The capital of {} is".into(),
        subject: "France".into(),
        relation: "P36".into(),
        target_new: "Rome".into(),
        target_true: "Paris".into(),
    }
}
