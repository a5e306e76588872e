//! FT-L / FT-M on the tiny random Llama: the edit takes, the L∞ box holds, same inputs give the
//! same patch, EasyEdit's YAML keys load.

use burn::tensor::backend::Backend;
use kedit_editing::{Editor, Patch};
use kedit_gradient_edit::ft::{Hparams, NormConstraint};
use kedit_gradient_edit::{Ft, FtHparams, Objective};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel};

use crate::common::{fixture, request};

fn tiny() -> LanguageModel<Cpu> {
    tiny_on(&Default::default())
}

fn tiny_on<B: Backend>(device: &B::Device) -> LanguageModel<B> {
    LanguageModel::load_hf(&fixture("tiny-llama"), device).unwrap()
}

fn hparams() -> FtHparams {
    let mut h = FtHparams::smollm2();
    h.layers = vec![0, 1];
    h.lr = 0.01;
    h
}

fn margin<B: Backend>(lm: &LanguageModel<B>) -> f32 {
    let s = lm
        .score(&[
            ("The capital of France is", " Rome"),
            ("The capital of France is", " Paris"),
        ])
        .unwrap();
    s[1].mean_nll() - s[0].mean_nll()
}

// A margin rise of 0.5 nats and bit-equality on one backend: thresholds that hold on every
// backend as they are.
test_device!(ft_m_and_ft_l_move_the_target_and_are_reproducible, ft_takes);
fn ft_takes<B: Backend>(device: &B::Device, _dev: TestDevice) {
    for objective in [Objective::TargetNew, Objective::PromptLast] {
        let mut lm = tiny_on::<B>(device);
        let before = margin(&lm);
        let patch = Ft::new(hparams(), objective)
            .unwrap()
            .apply(&mut lm, &[request()])
            .unwrap();
        let after = margin(&lm);
        assert!(
            after > before + 0.5,
            "{objective:?}: margin {before} -> {after}"
        );
        assert_eq!(patch.entries.len(), 2);
        let mut lm2 = tiny_on::<B>(device);
        let again = Ft::new(hparams(), objective)
            .unwrap()
            .apply(&mut lm2, &[request()])
            .unwrap();
        assert!(
            again == patch,
            "{objective:?}: same inputs, different patch"
        );
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        patch.save(&a).unwrap();
        again.save(&b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let mut lm3 = tiny_on::<B>(device);
        Patch::load(&a).unwrap().apply(&mut lm3.model).unwrap();
        assert_eq!(margin(&lm3).to_bits(), after.to_bits());
    }
}

#[test]
fn norm_constraint_keeps_every_weight_in_the_box() {
    let eps = 1e-3;
    let mut h = hparams();
    h.norm_constraint = NormConstraint::Epsilon(eps);
    let mut lm = tiny();
    let patch = Ft::new(h, Objective::TargetNew)
        .unwrap()
        .apply(&mut lm, &[request()])
        .unwrap();
    let worst = patch
        .entries
        .iter()
        .flat_map(|e| e.delta.iter())
        .fold(0f32, |a, d| a.max(d.abs()));
    // ε plus the f32 rounding of W₀ ± ε.
    assert!(
        worst <= (eps as f32) * (1.0 + 1e-3),
        "max |ΔW| = {worst} > ε = {eps}"
    );
    assert!(
        worst > (eps as f32) * 0.5,
        "the box should bind at lr 0.01: max |ΔW| = {worst}"
    );
}

#[test]
fn easyedit_yaml_loads_and_bad_keys_are_named() {
    let yaml = "alg_name: FT\nmodel_name: ./hugging_cache/llama-2-7b\ndevice: 0\nlayers: [21]\n\
rewrite_module_tmp: 'model.layers.{}.mlp.down_proj.weight'\nlayer_module_tmp: 'model.layers.{}'\n\
mlp_module_tmp: 'model.layers.{}.mlp'\nattn_module_tmp: 'model.layers.{}.self_attn'\n\
ln_f_module: 'model.norm'\nlm_head_module: 'lm_head'\nmodel_parallel: false\nnum_steps: 25\n\
batch_size: 1\nmax_length: 40\nlr: 5e-4\nweight_decay: 0\nkl_factor: 0\nnorm_constraint: false\n\
objective_optimization: 'target_new'\n";
    let h = FtHparams::from_yaml_str(yaml, "ft.yaml").unwrap();
    assert_eq!(h.norm_constraint, NormConstraint::Off(false));
    assert!(Ft::new(h.clone(), Objective::TargetNew).is_ok());
    let e = Ft::new(h, Objective::PromptLast).err().unwrap().to_string();
    assert!(e.contains("objective_optimization"), "{e}");
    let e = FtHparams::from_yaml_str(&format!("{yaml}lr_scale: 2\n"), "ft.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ft.yaml") && e.contains("lr_scale"), "{e}");
    let e = FtHparams::from_yaml_str(
        &yaml.replace("mlp.down_proj.weight", "mlp.up_proj.weight"),
        "ft.yaml",
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("rewrite_module_tmp"), "{e:#}");
}
