//! AlphaEdit on the tiny random Llama, with C computed from the bundled corpus: the batch edit
//! takes and reproduces, its update stays in the null space of C, an earlier edit's keys are
//! spared until the editor is reset, a resumed run's replay leaves the editor as the edit did,
//! and its hyperparameters are checked with one-line errors.

use crate::common::{assert_batch_edit_takes_and_reproduces, r, tiny_on};
use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Editor, Patch};
use kedit_locate_edit::alphaedit::NullSpace;
use kedit_locate_edit::stats::{self, SecondMoment};
use kedit_locate_edit::{alphaedit, Memit, MemitHparams};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel};

/// C at layer 0 of the tiny Llama from 2000 tokens of the bundled corpus.
fn moments<B: Backend>(lm: &LanguageModel<B>) -> Vec<SecondMoment> {
    stats::compute_layers(
        lm,
        &[0],
        &std::fs::read_to_string(stats::DEFAULT_CORPUS).unwrap(),
        2000,
    )
    .unwrap()
}

/// The median eigenvalue of `c`: as the threshold it leaves half the directions to AlphaEdit
/// whatever the random model's scale.
fn median_eigenvalue(c: &SecondMoment) -> f64 {
    let d = c.dim;
    let a = faer::Mat::<f64>::from_fn(d, d, |i, j| c.c[i * d + j]);
    let mut s: Vec<f64> = a
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .unwrap()
        .into_iter()
        .collect();
    s.sort_by(f64::total_cmp);
    s[d / 2]
}

fn hparams(c: &SecondMoment) -> MemitHparams {
    let mut h = MemitHparams::smollm2_alphaedit();
    h.layers = vec![0];
    h.context_template_length_params = vec![[4, 3]];
    h.nullspace_threshold = Some(median_eigenvalue(c));
    // The random model's keys are small (norm² ≪ 1): a small ridge lets the update reach them.
    h.l2 = Some(1e-4);
    h
}

/// An AlphaEdit editor with its context templates taken from `lm` now, as `kedit` makes them.
fn editor<B: Backend>(lm: &LanguageModel<B>) -> Memit {
    let m = moments(lm);
    let mut ed = alphaedit(hparams(&m[0]), &m).unwrap();
    Editor::<B>::prepare(&mut ed, lm).unwrap();
    ed
}

// NLL movements of ≥ 0.1 nats and bit-equality on one backend: they hold on every backend.
test_device!(alphaedit_batch_edit_takes_and_reproduces, batch);
fn batch<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let (patch, lm) = assert_batch_edit_takes_and_reproduces(device, editor::<B>);

    // The update moves nothing C's large directions hold: ‖C Δ‖ / ‖Δ‖ stays below the threshold.
    let m = moments(&lm);
    let (d, e) = (m[0].dim, &patch.entries[0]);
    let d_out = e.shape[1];
    let dw = faer::Mat::<f64>::from_fn(d, d_out, |i, o| e.delta[i * d_out + o] as f64);
    let c = faer::Mat::<f64>::from_fn(d, d, |i, j| m[0].c[i * d + j]);
    let ratio = (&c * &dw).norm_l2() / dw.norm_l2();
    let threshold = median_eigenvalue(&m[0]);
    assert!(
        ratio < threshold,
        "‖CΔ‖/‖Δ‖ {ratio} ≥ threshold {threshold}"
    );
}

/// Two sequential edits, the second about the first's subject: (first patch, second patch).
fn two_edits(ed: &mut Memit, lm: &mut LanguageModel<Cpu>) -> (Patch, Patch) {
    let (a, b) = same_subject();
    let first = Editor::<Cpu>::apply(ed, lm, &[a]).unwrap();
    let second = Editor::<Cpu>::apply(ed, lm, &[b]).unwrap();
    (first, second)
}

fn same_subject() -> (EditRequest, EditRequest) {
    (
        r("{} plays the", "Toko Yasuda", "piano", "guitar"),
        r("{} was born in", "Toko Yasuda", "Rome", "Tokyo"),
    )
}

#[test]
fn earlier_keys_are_preserved_until_reset_and_replayed_on_resume() {
    let mut lm = tiny_on::<Cpu>(&Default::default());
    let snapshot = kedit_editing::Snapshot::take(&lm.model);
    let mut ed = editor(&lm);
    let (first, second) = two_edits(&mut ed, &mut lm);

    // A fresh editor's edit of the second request alone: K_p is empty.
    let (_, b) = same_subject();
    let mut alone_lm = tiny_on::<Cpu>(&Default::default());
    first.apply(&mut alone_lm.model).unwrap();
    let alone = Editor::<Cpu>::apply(
        &mut editor(&alone_lm),
        &mut alone_lm,
        std::slice::from_ref(&b),
    )
    .unwrap();
    assert!(
        second.entries != alone.entries,
        "the first edit's keys must change the second update"
    );

    // A resumed run applies the first patch and replays it: the same second edit, bit for bit.
    let mut resumed_lm = tiny_on::<Cpu>(&Default::default());
    let mut resumed = editor(&resumed_lm);
    first.apply(&mut resumed_lm.model).unwrap();
    Editor::<Cpu>::replay(&mut resumed, &resumed_lm, &[same_subject().0]).unwrap();
    let again = Editor::<Cpu>::apply(&mut resumed, &mut resumed_lm, &[b]).unwrap();
    assert!(
        again.entries == second.entries,
        "a replayed first edit must leave the editor as the edit did"
    );

    // The model put back and the editor reset: the next group is edited as the first was.
    snapshot.restore(&mut lm.model);
    Editor::<Cpu>::reset(&mut ed);
    let (first2, second2) = two_edits(&mut ed, &mut lm);
    assert!(
        (first2.entries, second2.entries) == (first.entries, second.entries),
        "after reset, the same edits must give the same patches"
    );
}

/// A wrong AlphaEdit setting is one line naming the field.
#[test]
fn alphaedit_hparams_are_checked() {
    let lm = tiny_on::<Cpu>(&Default::default());
    let m = moments(&lm);
    let h = hparams(&m[0]);
    type Spoil = fn(&mut MemitHparams);
    let cases: [(Spoil, &str); 4] = [
        (|h| h.nullspace_threshold = None, "nullspace_threshold"),
        (|h| h.l2 = None, "L2"),
        (|h| h.l2 = Some(0.0), "L2"),
        // Below every eigenvalue: no null space, nothing could be written.
        (|h| h.nullspace_threshold = Some(1e-30), "no null space"),
    ];
    for (spoil, field) in cases {
        let mut bad = h.clone();
        spoil(&mut bad);
        let e = format!("{:#}", alphaedit(bad, &m).err().expect("refused"));
        assert!(e.contains(field) && !e.contains('\n'), "{e}");
    }
    // EasyEdit's key names load (values of its llama3-8b AlphaEdit file).
    use kedit_locate_edit::hparams::Hparams;
    let yaml = "alg_name: \"AlphaEdit\"\nlayers: [4, 5, 6, 7, 8]\nclamp_norm_factor: 0.75\nlayer_selection: \"all\"\n\
fact_token: \"subject_last\"\nv_num_grad_steps: 25\nv_lr: 1e-1\nv_loss_layer: 31\nv_weight_decay: 0.5\nkl_factor: 0.0625\n\
mom2_adjustment: true\nmom2_update_weight: 15000\nrewrite_module_tmp: \"model.layers.{}.mlp.down_proj\"\n\
mom2_dataset: \"wikipedia\"\nmom2_n_samples: 100000\nmom2_dtype: \"float32\"\nnullspace_threshold: 2e-2\nL2: 1\n";
    let h = MemitHparams::from_yaml_str(yaml, "llama3-8b.yaml").unwrap();
    assert_eq!((h.nullspace_threshold, h.l2), (Some(2e-2), Some(1.0)));
    // What a results file records for MEMIT and PMET has no AlphaEdit keys, as before they
    // existed (so their recorded runs still resume); AlphaEdit's has both.
    let keys = |h: MemitHparams| {
        let v = serde_json::to_value(h).unwrap();
        ["nullspace_threshold", "L2"].map(|k| v.get(k).is_some())
    };
    assert_eq!(keys(MemitHparams::smollm2()), [false, false]);
    assert_eq!(keys(MemitHparams::smollm2_pmet()), [false, false]);
    assert_eq!(keys(MemitHparams::smollm2_alphaedit()), [true, true]);
}

/// The null space of a C with known eigenvalues has the expected dimension.
#[test]
fn null_space_dimension_follows_the_threshold() {
    let d = 6;
    let eig = [1.0, 0.5, 0.1, 0.01, 0.001, 0.0001];
    let c = SecondMoment {
        layer: 3,
        samples: 1,
        dim: d,
        c: (0..d * d)
            .map(|x| if x / d == x % d { eig[x / d] } else { 0.0 })
            .collect(),
    };
    for (threshold, rank) in [(2e-2, 3), (0.2, 4), (1e-5, 0), (2.0, 6)] {
        assert_eq!(
            NullSpace::of(&c, threshold).unwrap().rank(),
            rank,
            "threshold {threshold}"
        );
    }
}
