//! EasyEdit's token accuracy: the batched, padded teacher-forced answers are what each prefix
//! run alone predicts, the labels are the pair's joint tokens after the prompt's, and locality
//! counts the answers a changed model no longer gives.

use burn::tensor::backend::Backend;
use kedit_editing::{EditCase, EditRequest};
use kedit_eval::token_acc::{teacher_forced, token_accuracy, LocalityReference};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel};

use crate::tiny;

/// The next token `lm` predicts after `ids`, run alone: no batch, no padding.
fn greedy_next<B: Backend>(lm: &LanguageModel<B>, ids: &[u32]) -> u32 {
    let logits = lm.next_token_logits(&[ids.to_vec()]);
    let id: Vec<i64> = logits
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    id[0] as u32
}

const PAIRS: &[(&str, &str)] = &[
    ("The capital of France is", "Paris"),
    ("Danielle Darrieux's mother tongue is", " French"),
    ("Toko Yasuda, the", "guitar player and singer"),
];

test_device!(answers_are_each_prefix_run_alone, answers_alone);
fn answers_alone<B: Backend>(device: &B::Device, dev: TestDevice) {
    // CPU: the same argmax of the same f32 sums in another batch shape. CUDA: TF32 tilings that
    // differ with the batch shape (perplexity's 2e-3) can flip a near-tie, once in the 3 × 3
    // families' positions at most.
    let flips_allowed = dev.pick(0, 1);
    let mut flips = 0;
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        let lm = tiny::<B>(name, device);
        let forced = teacher_forced(&lm, PAIRS).unwrap();
        for ((prompt, target), f) in PAIRS.iter().zip(&forced) {
            let p = lm.encode(prompt).unwrap();
            let joint = lm
                .encode(&format!("{prompt} {}", target.trim_start()))
                .unwrap();
            assert_eq!(f.labels, joint[p.len()..], "{name} {prompt:?}");
            assert_eq!(f.answers.len(), f.labels.len(), "{name} {prompt:?}");
            assert!(!f.labels.is_empty(), "{name} {prompt:?}");
            for (j, &a) in f.answers.iter().enumerate() {
                if a != greedy_next(&lm, &joint[..p.len() + j]) {
                    flips += 1;
                }
            }
        }
    }
    assert!(
        flips <= flips_allowed,
        "{flips} answers differ from the prefix run alone"
    );
}

fn case(id: &str) -> EditCase {
    EditCase {
        case_id: id.into(),
        subject_id: id.into(),
        request: EditRequest {
            prompt: "The mother tongue of {} is".into(),
            subject: "Danielle Darrieux".into(),
            relation: "P103".into(),
            target_new: "English".into(),
            target_true: "French language".into(),
        },
        paraphrase_prompts: vec![
            "Danielle Darrieux spoke the language".into(),
            "Danielle Darrieux, a native".into(),
        ],
        neighborhood_prompts: vec![
            "The mother tongue of Léon Blum is".into(),
            "Michel Rocard is a native speaker of".into(),
            "The native language of Montesquieu is".into(),
        ],
        ..Default::default()
    }
}

#[test]
fn accuracies_and_locality_count_tokens() {
    let device = Default::default();
    let (a, b) = (
        LanguageModel::<Cpu>::random("llama-tiny", 1, &device).unwrap(),
        LanguageModel::<Cpu>::random("llama-tiny", 2, &device).unwrap(),
    );
    let cases = [case("c0")];
    let c = &cases[0];
    let reference = LocalityReference::of(&a, &cases).unwrap();
    let share = |x: &[u32], y: &[u32]| {
        x.iter().zip(y).filter(|(p, q)| p == q).count() as f64 / x.len() as f64
    };
    for (lm, name) in [(&a, "a"), (&b, "b")] {
        let acc = token_accuracy(lm, &cases, Some(&reference)).unwrap()[0];
        let new = c.request.target_new.as_str();
        let forced = |prompts: &[String], target: &str| {
            let pairs: Vec<(&str, &str)> = prompts.iter().map(|p| (p.as_str(), target)).collect();
            teacher_forced(lm, &pairs).unwrap()
        };
        let rewrite = forced(&[c.request.full_prompt()], new);
        assert_eq!(
            acc.rewrite_acc,
            share(&rewrite[0].answers, &rewrite[0].labels),
            "{name}"
        );
        let rephrase = forced(&c.paraphrase_prompts, new);
        let mean = rephrase
            .iter()
            .map(|f| share(&f.answers, &f.labels))
            .sum::<f64>()
            / 2.0;
        assert!((acc.rephrase_acc.unwrap() - mean).abs() < 1e-12, "{name}");
        // Locality: the answers of `a` (the reference) against those of `lm`, position by
        // position, averaged per prompt then over prompts.
        let on_lm = forced(&c.neighborhood_prompts, &c.request.target_true);
        let pre: Vec<Vec<u32>> = c
            .neighborhood_prompts
            .iter()
            .map(|p| {
                teacher_forced(&a, &[(p.as_str(), c.request.target_true.as_str())]).unwrap()[0]
                    .answers
                    .clone()
            })
            .collect();
        // "French language": two tokens or more after each prompt, so a share can be partial.
        assert!(pre.iter().all(|p| p.len() >= 2), "{pre:?}");
        let expected = on_lm
            .iter()
            .zip(&pre)
            .map(|(f, p)| share(&f.answers, p))
            .sum::<f64>()
            / 3.0;
        assert!((acc.locality.unwrap() - expected).abs() < 1e-12, "{name}");
        if name == "a" {
            assert_eq!(
                acc.locality,
                Some(1.0),
                "the reference model against itself"
            );
        } else {
            assert!(
                acc.locality.unwrap() < 1.0,
                "two random models agree everywhere?"
            );
        }
    }
    // Without a reference there is no locality; the other two do not depend on it.
    let alone = token_accuracy(&b, &cases, None).unwrap()[0];
    let with = token_accuracy(&b, &cases, Some(&reference)).unwrap()[0];
    assert_eq!(alone.locality, None);
    assert_eq!(
        (alone.rewrite_acc, alone.rephrase_acc),
        (with.rewrite_acc, with.rephrase_acc)
    );
    // A case the reference never read is an error naming it, not a silent 1.
    let err = token_accuracy(&b, &[case("c9")], Some(&reference)).unwrap_err();
    assert!(format!("{err:#}").contains("case c9"), "{err:#}");
}

/// A neighbourhood prompt with its own answer (EasyEdit's `loc_ans`, KnowEdit's locality): NS
/// compares p(that answer) with p(target_new), and locality teacher-forces that answer.
#[test]
fn own_neighbour_answers_are_what_ns_and_locality_read() {
    let device = Default::default();
    let (a, b) = (
        LanguageModel::<Cpu>::random("llama-tiny", 1, &device).unwrap(),
        LanguageModel::<Cpu>::random("llama-tiny", 2, &device).unwrap(),
    );
    let mut own = case("c0");
    own.neighborhood_targets = vec![
        "Paris".into(),
        "guitar player".into(),
        "the Holy Roman Empire".into(),
    ];
    let plain = kedit_eval::evaluate(&b, &[case("c0")]).unwrap().remove(0);
    let got = kedit_eval::evaluate(&b, std::slice::from_ref(&own))
        .unwrap()
        .remove(0);
    // The same rewrite and paraphrase numbers; NS from each prompt's own answer, p from the
    // model's own scores of those pairs.
    assert_eq!((got.es, got.ps), (plain.es, plain.ps));
    let new = kedit_eval::spaced(&own.request.target_new);
    let answers: Vec<String> = (0..3)
        .map(|i| kedit_eval::spaced(own.neighborhood_target(i)))
        .collect();
    let mut pairs = Vec::new();
    for (p, answer) in own.neighborhood_prompts.iter().zip(&answers) {
        pairs.push((p.as_str(), answer.as_str()));
        pairs.push((p.as_str(), new.as_str()));
    }
    let p: Vec<f64> = b
        .score(&pairs)
        .unwrap()
        .iter()
        .map(|s| (-s.mean_nll() as f64).exp())
        .collect();
    let margins: Vec<f64> = p.chunks(2).map(|x| x[0] - x[1]).collect();
    let nm = margins.iter().sum::<f64>() / 3.0;
    assert!((got.nm.unwrap() - nm).abs() < 1e-6, "{:?} vs {nm}", got.nm);
    assert!(
        (got.nm.unwrap() - plain.nm.unwrap()).abs() > 1e-6,
        "NS read target_true"
    );
    // Wins, where no margin is a near-tie that batching could flip.
    if margins.iter().all(|m| m.abs() > 1e-5) {
        let wins = margins.iter().filter(|m| **m > 0.0).count() as f64 / 3.0;
        assert_eq!(got.ns, Some(wins));
    }
    // A neighbour answered by target_new itself cannot tell the two apart: NS leaves it out.
    let mut same = own.clone();
    same.neighborhood_targets[0] = format!(" {}", own.request.target_new);
    let m = kedit_eval::evaluate(&b, &[same]).unwrap().remove(0);
    let nm2 = (margins[1] + margins[2]) / 2.0;
    assert!((m.nm.unwrap() - nm2).abs() < 1e-6, "{:?} vs {nm2}", m.nm);
    // Locality: `a`'s answers on the prompts teacher-forced on their own answers, against `b`'s.
    let reference = LocalityReference::of(&a, std::slice::from_ref(&own)).unwrap();
    let acc = token_accuracy(&b, std::slice::from_ref(&own), Some(&reference)).unwrap()[0];
    let forced = |lm: &LanguageModel<Cpu>| {
        let pairs: Vec<(&str, &str)> = own
            .neighborhood_prompts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), own.neighborhood_target(i)))
            .collect();
        teacher_forced(lm, &pairs).unwrap()
    };
    let (pre, post) = (forced(&a), forced(&b));
    assert_eq!(pre[2].labels.len(), post[2].answers.len());
    assert!(pre[2].labels.len() >= 3, "{:?}", pre[2].labels);
    let expected = pre
        .iter()
        .zip(&post)
        .map(|(x, y)| {
            x.answers
                .iter()
                .zip(&y.answers)
                .filter(|(p, q)| p == q)
                .count() as f64
                / x.answers.len() as f64
        })
        .sum::<f64>()
        / 3.0;
    assert!((acc.locality.unwrap() - expected).abs() < 1e-12);
}

/// Portability (KnowEdit's and ZsRE's questions that should follow from the edit): each answer
/// teacher-forced, the share of its tokens answered right, averaged over the questions; absent
/// where the case has none, and without effect on the other accuracies.
#[test]
fn portability_is_each_answers_token_accuracy() {
    let lm = LanguageModel::<Cpu>::random("llama-tiny", 3, &Default::default()).unwrap();
    let mut c = case("c0");
    c.portability_prompts = vec![
        "Danielle Darrieux's mother tongue is".into(),
        "The language Danielle Darrieux writes in is".into(),
    ];
    c.portability_prompts
        .push("Danielle Darrieux wrote her memoirs in".into());
    c.portability_targets = vec![
        "English".into(),
        "the English language".into(),
        "English".into(),
    ];
    let plain = token_accuracy(&lm, &[case("c0")], None).unwrap()[0];
    let got = token_accuracy(&lm, std::slice::from_ref(&c), None).unwrap()[0];
    assert_eq!(plain.portability, None);
    assert_eq!(
        (got.rewrite_acc, got.rephrase_acc, got.locality),
        (plain.rewrite_acc, plain.rephrase_acc, plain.locality)
    );
    let pairs: Vec<(&str, &str)> = c
        .portability_prompts
        .iter()
        .zip(&c.portability_targets)
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let forced = teacher_forced(&lm, &pairs).unwrap();
    assert!(forced[1].labels.len() >= 3, "{:?}", forced[1].labels);
    let acc: Vec<f64> = forced.iter().map(|f| f.accuracy().unwrap()).collect();
    let expected = acc.iter().sum::<f64>() / 3.0;
    assert!((got.portability.unwrap() - expected).abs() < 1e-12);
    // With kinds, EasyEdit's average: within each kind, then over the kinds.
    c.portability_kinds = vec![
        "Reasoning".into(),
        "Subject_Aliasing".into(),
        "Subject_Aliasing".into(),
    ];
    let by_kind = token_accuracy(&lm, std::slice::from_ref(&c), None).unwrap()[0];
    let expected = (acc[0] + (acc[1] + acc[2]) / 2.0) / 2.0;
    assert!((by_kind.portability.unwrap() - expected).abs() < 1e-12);
}

/// SmolLM2 against transformers (fixtures/token-acc.json, `fixtures/reference/token_acc.py`:
/// EasyEdit's slicing of the model's own argmax, each pair run alone): the same labels, and the
/// same answers wherever the top two logits there are further apart than kedit's logits can be
/// from transformers' (1e-3 on the CPU, `smollm2_matches_transformers`; 1e-2 here for margin);
/// then each case's rewrite_acc and rephrase_acc as transformers gives them.
#[test]
fn smollm2_answers_match_transformers() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("token-acc.json")).unwrap())
            .unwrap();
    let all = kedit_editing::requests::load_cases(&dir.join("s2rke-wikidata.json")).unwrap();
    let lm =
        LanguageModel::<Cpu>::load(&kedit_models::ModelSpec::SmolLm2, &Default::default()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (mut checked, mut near_ties) = (0, 0);
    let ref_cases = reference["cases"].as_array().unwrap();
    assert!(ref_cases.len() >= 10, "{}", ref_cases.len());
    for r in ref_cases {
        let id = r["case_id"].as_str().unwrap();
        let case = all.iter().find(|c| c.case_id == id).expect("the case");
        let mut pairs = vec![&r["rewrite"]];
        pairs.extend(r["rephrase"].as_array().unwrap());
        pairs.extend(r["neighbours"].as_array().unwrap());
        let asked: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p["prompt"].as_str().unwrap(), p["target"].as_str().unwrap()))
            .collect();
        let got = teacher_forced(&lm, &asked).unwrap();
        for (p, g) in pairs.iter().zip(&got) {
            assert_eq!(g.labels, ids(&p["labels"]), "{id} {:?}", p["prompt"]);
            let gaps: Vec<f64> = p["gaps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            for ((a, want), gap) in g.answers.iter().zip(ids(&p["answers"])).zip(gaps) {
                if gap > 1e-2 {
                    assert_eq!(*a, want, "{id} {:?}: gap {gap}", p["prompt"]);
                    checked += 1;
                } else {
                    near_ties += 1;
                }
            }
        }
        let acc = token_accuracy(&lm, std::slice::from_ref(case), None).unwrap()[0];
        assert_eq!(acc.rewrite_acc, r["rewrite_acc"].as_f64().unwrap(), "{id}");
        match r["rephrase_acc"].as_f64() {
            Some(x) => assert!((acc.rephrase_acc.unwrap() - x).abs() < 1e-12, "{id}"),
            None => assert_eq!(acc.rephrase_acc, None, "{id}"),
        }
    }
    // Nearly every answer is checked: a near-tie is rare.
    assert!(
        checked >= 60 && near_ties <= 2,
        "{checked} checked, {near_ties} near ties"
    );
}
