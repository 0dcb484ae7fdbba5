"""Training end to end on a tiny model: tracking, resume, faults, packing, export, QLoRA."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from conftest import quiet_training
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback

from tuneforge.config import LoRAConfig, TrainingConfig
from tuneforge.errors import ModelLoadError
from tuneforge.recipes import all_keys, load_recipe
from tuneforge.train.callbacks import DivergenceCallback
from tuneforge.train.checkpoints import last_good_checkpoint
from tuneforge.train.trainer import LoRATrainer, TrainingError, oom_advice
from tuneforge.train.workflow import run_training


def recipe_for(tiny_model_dir, data_file, tmp_path, *overrides):
    return load_recipe(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train_file={data_file}",
            "data.max_seq_length=64",
            "data.validation_fraction=0.25",
            f"training.output_dir={tmp_path / 'run'}",
            "training.max_steps=2",
            "training.per_device_train_batch_size=2",
            "training.gradient_accumulation_steps=1",
            "training.logging_steps=1",
            "training.save_strategy=steps",
            "training.save_steps=1",
            "training.eval_strategy=steps",
            "training.eval_steps=2",
            "training.learning_rate=1e-2",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *overrides,
        ],
    )


def run_of(recipe):
    client = MlflowClient(recipe.tracking.tracking_uri)
    run_file = os.path.join(recipe.training.output_dir, "mlflow_run.json")
    with open(run_file) as f:
        run_id = json.load(f)["run_id"]
    return client, client.get_run(run_id)


def test_a_run_is_fully_tracked(tiny_model_dir, small_data_file, tmp_path):
    recipe = recipe_for(tiny_model_dir, small_data_file, tmp_path)
    assert recipe.training.fp16  # the default fp16: true must not break a CPU run
    outcome = run_training(recipe)
    client, run = run_of(recipe)
    assert run.info.status == "FINISHED" and outcome.run_id == run.info.run_id
    params = run.data.params
    assert set(all_keys()) <= set(params)  # every hyperparameter of the recipe, flattened
    assert params["training.learning_rate"] == "0.01" and params["lora.r"] == "16"
    assert len(params["dataset.sha256"]) == 64
    assert int(params["dataset.train_examples"]) + int(params["dataset.validation_examples"]) == 16
    assert params["env.torch"] == torch.__version__
    # the speed plan and why: on this CPU, the recipe as written
    assert params["speed.micro_batch"] == "2" and params["speed.gradient_checkpointing"] == "off"
    assert params["speed.attention"] == "sdpa" and params["speed.liger_kernel"] == "False"
    for metric in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss"):
        assert client.get_metric_history(run.info.run_id, metric), metric
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert {"final/train_loss", "final/eval_loss"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "checkpoints", "dataset", "recipe.yaml"} <= artifacts
    adapter_files = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter_files
    assert (outcome.adapter_dir / "adapter_model.safetensors").is_file()


def test_resume_continues_the_same_run_from_the_last_checkpoint(tiny_model_dir, small_data_file, tmp_path):
    first = run_training(recipe_for(tiny_model_dir, small_data_file, tmp_path))
    recipe = recipe_for(tiny_model_dir, small_data_file, tmp_path, "training.max_steps=4")
    second = run_training(recipe, resume="always")
    assert second.run_id == first.run_id and second.global_step == 4
    client, run = run_of(recipe)
    assert run.data.tags["resumed_from"] == "checkpoint-2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]


def test_resume_without_checkpoint_is_an_error(tiny_model_dir, small_data_file, tmp_path):
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        run_training(recipe_for(tiny_model_dir, small_data_file, tmp_path), resume="always")


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(
    tiny_model_dir, small_data_file, tmp_path, caplog
):
    run_training(recipe_for(tiny_model_dir, small_data_file, tmp_path))
    newest = tmp_path / "run" / "checkpoint-2" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # half-written
    assert last_good_checkpoint(tmp_path / "run").name == "checkpoint-1"
    assert "checkpoint-2 is corrupt or incomplete" in caplog.text
    optimizer = tmp_path / "run" / "checkpoint-1" / "optimizer.pt"
    optimizer.write_bytes(b"not a torch file")  # present but unreadable: as bad as missing
    assert last_good_checkpoint(tmp_path / "run") is None
    assert "checkpoint-1 is corrupt or incomplete (unreadable" in caplog.text
    optimizer.unlink()  # incomplete
    assert last_good_checkpoint(tmp_path / "run") is None


class Poison(TrainerCallback):
    """Makes the model produce NaN from a given step on, as a diverging run would."""

    def __init__(self, model, at_step):
        self.model, self.at_step = model, at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    if "lora_B" in name:
                        p.fill_(float("nan"))


def test_divergence_stops_cleanly_with_a_checkpoint(tiny_model_dir, train_data, tmp_path, caplog):
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2))
    model = trainer.prepare_model()
    cfg = quiet_training(str(tmp_path), max_steps=8, learning_rate=2e-4)
    outcome = trainer.train(train_data[0], None, cfg, callbacks=[Poison(model, 2)])
    assert outcome.stopped_early == "divergence" and outcome.global_step == 3
    assert (tmp_path / "checkpoint-3").is_dir()  # saved even with save_strategy=no
    assert "divergence at step 3: loss is nan" in caplog.text


def test_divergence_detects_spikes_and_can_only_warn():
    class Control:
        should_save = should_training_stop = False

    class State:
        global_step = 5

    cb, control = DivergenceCallback(factor=10, stop=True), Control()
    for loss in (1.0, 1.1, 0.9, 1.0):
        cb.on_log(None, State, control, logs={"loss": loss})
    assert not control.should_training_stop
    cb.on_log(None, State, control, logs={"loss": 50.0})
    assert control.should_training_stop and control.should_save and "running median" in cb.reason
    warn_only, control = DivergenceCallback(stop=False), Control()
    warn_only.on_log(None, State, control, logs={"loss": float("inf")})
    assert warn_only.diverged_at == 5 and not control.should_training_stop


class CtrlC(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_and_stops(tiny_model_dir, train_data, tmp_path):
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2))
    trainer.prepare_model()
    cfg = quiet_training(str(tmp_path), max_steps=6, learning_rate=2e-4)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / a background job
    outcome = trainer.train(train_data[0], None, cfg, callbacks=[CtrlC()])
    assert outcome.stopped_early == "interrupted" and outcome.global_step <= 2
    assert last_good_checkpoint(tmp_path) is not None
    assert signal.getsignal(signal.SIGINT) is before  # the handler in place before training, restored


class Explode(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("disk on fire")


def test_a_failing_run_is_marked_failed_and_keeps_its_checkpoints(
    tiny_model_dir, small_data_file, tmp_path, monkeypatch
):
    original = LoRATrainer.train
    monkeypatch.setattr(
        LoRATrainer, "train", lambda self, *a, **kw: original(self, *a, **kw, callbacks=[Explode()])
    )
    recipe = recipe_for(tiny_model_dir, small_data_file, tmp_path, "training.max_steps=4")
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_training(recipe)
    _, run = run_of(recipe)
    assert run.info.status == "FAILED" and "disk on fire" in run.data.tags["error"]
    assert run.data.metrics["final/global_step"] == 2 and "final/loss" in run.data.metrics
    assert (tmp_path / "run" / "checkpoint-1").is_dir()


def test_out_of_memory_says_what_to_lower(tiny_model_dir, small_data_file, tmp_path, monkeypatch):
    import transformers

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "train", oom)
    recipe = recipe_for(tiny_model_dir, small_data_file, tmp_path)
    with pytest.raises(TrainingError) as e:
        run_training(recipe)
    msg = str(e.value)
    assert "per_device_train_batch_size=2" in msg and "gradient_checkpointing=true" in msg
    assert "use_quantization=true" in msg and "max_seq_length" in msg
    assert run_of(recipe)[1].info.status == "FAILED"


def test_oom_advice_names_what_the_speed_plan_chose():
    from tuneforge.models.speed_plan import SpeedPlan

    plan = SpeedPlan(8, 2, 0, 32, True, True, "varlen", estimated_peak_gb=70.0, budget_gb=72.0)
    msg = oom_advice(TrainingConfig(per_device_train_batch_size=4, gradient_accumulation_steps=4), plan)
    assert "per_device_train_batch_size=8" in msg and "gradient_accumulation_steps=2" in msg
    assert "training.auto_tune=false" in msg and "gradient_checkpointing=true (currently off)" in msg


def test_oom_advice_leaves_out_what_is_already_on():
    msg = oom_advice(TrainingConfig(gradient_checkpointing=True, use_quantization=True))
    assert "gradient_checkpointing" not in msg and "use_quantization" not in msg


def test_a_model_that_cannot_be_loaded_is_named(small_data_file, tmp_path):
    recipe = recipe_for(tmp_path / "no-model", small_data_file, tmp_path)
    with pytest.raises(ModelLoadError, match="no-model"):
        run_training(recipe)


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir, train_data):
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2))
    model = trainer.prepare_model().eval()
    rows = [train_data[0][i] for i in range(3)]
    packed = trainer.collator(packing=True)([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    assert torch.allclose(together, alone, atol=1e-5)


def test_varlen_attention_keeps_packed_examples_apart_in_logits_and_gradients(tiny_model_dir, train_data):
    from tuneforge.config import ModelConfig

    rows = [train_data[0][i] for i in range(3)]
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32", attn_implementation="varlen")
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2, lora_dropout=0.0), cfg)
    model = trainer.prepare_model()
    assert model.config._attn_implementation == "varlen"
    packed = trainer.collator(packing=True)([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
    assert packed["cu_seq_lens_q"].tolist() == [
        0,
        *torch.tensor([len(r["input_ids"]) for r in rows]).cumsum(0),
    ]
    together = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
    alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    assert torch.allclose(together, alone, atol=1e-5)
    # the same gradients as the examples one by one: nothing leaks backwards across a boundary either
    lora = [p for p in model.parameters() if p.requires_grad]
    grads_packed = torch.autograd.grad(together[:5].sum() + together[-3:].sum(), lora)
    grads_alone = torch.autograd.grad(alone[:5].sum() + alone[-3:].sum(), lora)
    for a, b in zip(grads_packed, grads_alone, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    # a padded batch (no lengths) takes the SDPA path with a causal padding mask: same logits as alone
    first, second = rows[0]["input_ids"], rows[1]["input_ids"]
    width = max(len(first), len(second))
    ids = torch.tensor([first + [0] * (width - len(first)), second + [0] * (width - len(second))])
    mask = torch.tensor(
        [[1] * len(first) + [0] * (width - len(first)), [1] * len(second) + [0] * (width - len(second))]
    )
    padded = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(padded[0, : len(first)], alone[: len(first)], atol=1e-5)
    assert torch.allclose(padded[1, : len(second)], alone[len(first) : len(first) + len(second)], atol=1e-5)


def test_a_speed_plan_sets_the_batch_split_and_checkpoints_only_the_layers_it_names(
    tiny_model_dir, train_data, tmp_path
):
    from tuneforge.models.speed_plan import SpeedPlan
    from tuneforge.train.speedups import decoder_layers

    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2))
    plan = SpeedPlan(micro_batch=1, accumulation=3, checkpointed_layers=1, num_layers=2, liger=False,
                     compile=False, attention="varlen")  # fmt: skip
    model = trainer.prepare_model(plan=plan)
    layers = decoder_layers(model)
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    model.train()
    batch = trainer.collator(packing=True)(
        [{k: train_data[0][j][k] for k in ("input_ids", "labels")} for j in (0, 1)]
    )
    model(**batch).loss.backward()
    assert calls == [2, 1]  # the checkpointed layer ran again in the backward pass, the other did not
    cfg = TrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,  # the plan's 1 x 3 wins
        gradient_accumulation_steps=1,
        save_strategy="no",
        eval_strategy="no",
        fp16=False,
    )
    trainer.train(train_data[0], None, cfg)
    args = trainer.trainer.args
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 3)
    assert trainer.trainer.state.epoch == pytest.approx(
        3 / len(train_data[0])
    )  # one step took 1 x 3 examples


def test_export_merges_in_the_base_dtype(tmp_path, train_data):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from tuneforge.models.tiny import build_tiny_model
    from tuneforge.train.export import export_merged

    base_dir = tmp_path / "bf16-base"
    build_tiny_model(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir).to(torch.bfloat16)
    model.save_pretrained(base_dir)  # a bf16 checkpoint, as 7B models ship
    trainer = LoRATrainer(str(base_dir), LoRAConfig(r=2))
    trainer.prepare_model()
    trainer.train(
        train_data[0],
        None,
        TrainingConfig(
            output_dir=str(tmp_path / "run"),
            max_steps=1,
            per_device_train_batch_size=2,
            save_strategy="no",
            eval_strategy="no",
            fp16=False,
            learning_rate=1e-1,
        ),
    )
    out = export_merged(tmp_path / "run" / "adapter", tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118
    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([train_data[0][0]["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(
            merged(ids).logits.float(), trainer.model(input_ids=ids).logits.float(), atol=0.1
        )


def test_qlora_run_end_to_end(tiny_model_dir, small_data_file, tmp_path):
    recipe = recipe_for(
        tiny_model_dir,
        small_data_file,
        tmp_path,
        "training.use_quantization=true",
        "quantization.compute_dtype=float32",
        "training.save_strategy=no",
        "training.eval_strategy=no",
    )
    outcome = run_training(recipe)
    saved = json.loads((outcome.adapter_dir / "quantization_config.json").read_text())
    assert saved["load_in_4bit"] and saved["bnb_4bit_quant_type"] == "nf4"
    reloaded = LoRATrainer(str(tiny_model_dir), recipe.lora, recipe.model, recipe.quantization).load_adapter(
        outcome.adapter_dir
    )
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in reloaded.modules())


def test_duration_and_memory_are_estimated_from_measured_steps(tiny_model_dir, train_data, tmp_path, caplog):
    from tuneforge.tracking import ExperimentTracker

    caplog.set_level(logging.INFO)
    tracker = ExperimentTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start_run("estimate", {})
    trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2))
    trainer.prepare_model()
    assert "trainable" in caplog.text and "gradients + optimizer state" in caplog.text
    cfg = TrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        save_strategy="no",
        eval_strategy="no",
        fp16=False,
    )
    trainer.train(train_data[0], None, cfg, tracker)
    assert "estimate: 6 steps x" in caplog.text and "peak memory" in caplog.text
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert metrics["estimate/seconds_per_step"] > 0 and metrics["peak_memory_gb"] > 0.05
    assert metrics["estimate/total_seconds"] == pytest.approx(6 * metrics["estimate/seconds_per_step"])


def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model_dir, train_data):
    from tuneforge.models.speed_plan import SpeedPlan
    from tuneforge.train.speedups import decoder_layers

    results = []
    for compiled in (False, True):
        trainer = LoRATrainer(str(tiny_model_dir), LoRAConfig(r=2, lora_dropout=0.0))
        plan = SpeedPlan(micro_batch=2, accumulation=1, checkpointed_layers=0, num_layers=2, liger=False,
                         compile=compiled, attention="sdpa")  # fmt: skip
        model = trainer.prepare_model(plan=plan, seed=3)
        layers = decoder_layers(model)
        assert [layer._compiled_call_impl is not None for layer in layers] == [compiled] * len(layers)
        torch.manual_seed(4)
        with torch.no_grad():  # B starts at zero, which would leave A without a gradient
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
        batch = trainer.collator(packing=False)(
            [{k: train_data[0][j][k] for k in ("input_ids", "labels")} for j in (0, 1)]
        )
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    (eager_loss, eager), (compiled_loss, compiled) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert eager.keys() == compiled.keys() and eager
    for name, grad in eager.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(compiled[name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("fp32_unquantized, expected", [(None, torch.bfloat16), (True, torch.float32)])
def test_qlora_keeps_embeddings_head_and_norms_in_bf16_unless_asked(
    tiny_model_dir, fp32_unquantized, expected
):
    from tuneforge.config import ModelConfig, QuantizationConfig

    trainer = LoRATrainer(
        str(tiny_model_dir),
        LoRAConfig(r=2),
        ModelConfig(name_or_path=str(tiny_model_dir), dtype="bfloat16"),
        QuantizationConfig(fp32_unquantized=fp32_unquantized),
    )
    model = trainer.prepare_model(use_quantization=True)
    base = model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == expected
    assert base.model.norm.weight.dtype == expected
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_a_run_folder_records_its_run_and_later_stages_attach_to_it(tmp_path):
    from mlflow.exceptions import MlflowException

    from tuneforge.tracking import ExperimentTracker, attach, recorded_run_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = tmp_path / "run"
    folder.mkdir()
    assert attach(folder) is None and recorded_run_id(folder) is None
    tracker = ExperimentTracker(uri)
    run_id = tracker.start_run("exp", {"a": 1})
    tracker.record(folder)
    later = attach(folder)
    assert later.run_id == run_id == recorded_run_id(folder) and later.tracking_uri == uri
    later.log_metrics({"eval/x": 0.5}, step=0)
    assert MlflowClient(uri).get_run(run_id).data.metrics == {"eval/x": 0.5}
    with pytest.raises(MlflowException, match="no-such-run"):
        ExperimentTracker.for_run("no-such-run", uri)


@pytest.mark.parametrize(
    ("asked", "has", "want"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_bf16_on_a_cpu_only_when_asked_and_the_cpu_has_bf16_instructions(
    asked, has, want, monkeypatch, caplog
):
    from tuneforge.config import TrainingConfig
    from tuneforge.train import builders

    monkeypatch.setattr(builders, "cpu_has_bf16", lambda: has)
    p = builders.choose_precision(TrainingConfig(bf16=asked, fp16=False), "cpu")
    assert (p.bf16, p.fp16) == (want, False)
    assert ("no bf16 instructions" in caplog.text) == (asked and not has)
