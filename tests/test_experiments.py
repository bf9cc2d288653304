import dataclasses
import json
import warnings

import pytest
import torch

from bnlab import _workers, experiments
from bnlab.data import Dataset, load_mnist
from bnlab.experiments import (
    RunComparison,
    SeedRuns,
    compare_runs,
    comparisons_table,
    results_table,
    run,
    run_key,
    run_seeds,
    run_seeds_with_models,
    run_variants,
    run_with_model,
    seed_workers,
)
from bnlab.models import MLPConfig
from bnlab.stats import compare
from bnlab.training import EpochStats, History, TrainConfig

SHORT = TrainConfig(epochs=1, batch_size=200)


def without_seconds(history: History) -> list[tuple]:
    return [(e.epoch, e.loss, e.train_acc, e.val_acc) for e in history.epochs] + [history.test_acc]


def fake_history(dataset="MNIST-10k subset", losses=(1.0, 0.5), test_acc=90.0) -> History:
    epochs = [EpochStats(i + 1, loss, 80.0 + i, 70.0 + i, 0.1) for i, loss in enumerate(losses)]
    return History(dataset, "cpu", epochs, test_acc)


class CountingTrainer:
    """Stands in for ``train_model``: records each call and returns a History that tells the calls apart."""

    def __init__(self):
        self.calls = []

    def __call__(self, model_config, data, config, *, device=None, progress=True, engine=None):
        self.calls.append((model_config, config, data.name))
        return None, fake_history(data.name, losses=(1.0, 1.0 / len(self.calls)), test_acc=float(len(self.calls)))


@pytest.fixture
def trainer(monkeypatch):
    """A stand-in trainer; seeds run in this process (workers would train for real)."""
    counting = CountingTrainer()
    monkeypatch.setattr(experiments, "train_model", counting)
    monkeypatch.setenv("BNLAB_WORKERS", "1")
    return counting


def cache_files(cache):
    return sorted(p.name for p in cache.iterdir())


# --- the cache ------------------------------------------------------------------------------------------------------


def must_not_train(*args, **kwargs):
    raise AssertionError("train_model was called although the run is cached")


def test_a_cache_hit_returns_the_same_history_without_training(small_data, tmp_path, monkeypatch):
    first = run(MLPConfig(), SHORT, small_data, cache=tmp_path, device="cpu")

    monkeypatch.setattr(experiments, "train_model", must_not_train)
    again = run(MLPConfig(), SHORT, small_data, cache=tmp_path, device="cpu")
    assert again == first
    assert without_seconds(again) == without_seconds(first)
    assert len(cache_files(tmp_path)) == 1


def test_the_cache_lives_where_BNLAB_CACHE_says(small_data, tmp_path, monkeypatch, trainer):
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "from-env"))
    run(MLPConfig(), SHORT, small_data)
    assert len(cache_files(tmp_path / "from-env")) == 1


@pytest.mark.parametrize(
    "model, config",
    [
        (MLPConfig(placement="after"), SHORT),
        (MLPConfig(dropout=0.5), SHORT),
        (MLPConfig(hidden=(75, 40)), SHORT),
        (MLPConfig(), TrainConfig(epochs=2, batch_size=200)),
        (MLPConfig(), TrainConfig(epochs=1, batch_size=200, lr=0.05)),
        (MLPConfig(), TrainConfig(epochs=1, batch_size=200, seed=7)),
        (MLPConfig(), TrainConfig(epochs=1, batch_size=200, record_train_acc=True)),
        (MLPConfig(), TrainConfig(epochs=1, batch_size=200, momentum=0.9)),
    ],
)
def test_a_changed_model_or_train_config_trains_anew(small_data, tmp_path, trainer, model, config):
    baseline = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    changed = run(model, config, small_data, cache=tmp_path)
    assert len(trainer.calls) == 2 and trainer.calls[1][:2] == (model, config)
    assert changed != baseline
    assert len(cache_files(tmp_path)) == 2
    assert run(MLPConfig(), SHORT, small_data, cache=tmp_path) == baseline  # both stay cached
    assert len(trainer.calls) == 2


def test_a_changed_data_set_trains_anew(small_data, subset_root, tmp_path, trainer):
    run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    fewer_images = load_mnist(subset_root, train_samples=500)
    renamed = Dataset("another name", small_data.train, small_data.val, small_data.test)
    run(MLPConfig(), SHORT, fewer_images, cache=tmp_path)
    run(MLPConfig(), SHORT, renamed, cache=tmp_path)
    assert len(trainer.calls) == 3
    keys = {run_key(MLPConfig(), SHORT, d) for d in (small_data, fewer_images, renamed)}
    assert len(keys) == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "",  # empty
        lambda text: "\x00\xff garbage",  # not JSON
        lambda text: json.dumps({"dataset": "MNIST-10k subset"}),  # JSON, but not a History
        lambda text: json.dumps([1, 2, 3]),
    ],
    ids=["truncated", "empty", "garbage", "incomplete", "wrong-type"],
)
def test_a_corrupt_or_truncated_cache_file_is_recomputed_not_crashed_on(small_data, tmp_path, trainer, damage):
    first = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_text(damage(path.read_text()))
    again = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    assert len(trainer.calls) == 2
    assert again != first  # the second call's History, not the damaged file
    assert History.from_dict(json.loads(path.read_text())) == again  # and the file is whole again


def test_an_interrupted_write_leaves_no_partial_file(small_data, tmp_path, monkeypatch, trainer):
    real_dump = json.dump

    def dump_then_fail(payload, f, **kwargs):
        f.write(json.dumps(payload)[:20])  # part of the file is written...
        raise KeyboardInterrupt  # ...then the run is interrupted

    monkeypatch.setattr(experiments.json, "dump", dump_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    assert cache_files(tmp_path) == []  # neither the entry nor a temporary file

    monkeypatch.setattr(experiments.json, "dump", real_dump)
    stored = run(MLPConfig(), SHORT, small_data, cache=tmp_path)
    (path,) = tmp_path.iterdir()
    before = path.read_text()

    monkeypatch.setattr(experiments.json, "dump", dump_then_fail)
    with pytest.raises(KeyboardInterrupt):
        experiments.write_json_atomic(path, fake_history().to_dict())
    assert path.read_text() == before  # an interrupted overwrite keeps the old entry whole
    assert cache_files(tmp_path) == [path.name]
    assert run(MLPConfig(), SHORT, small_data, cache=tmp_path) == stored


def test_run_seeds_runs_each_seed_once_in_order(small_data, tmp_path, trainer):
    histories = run_seeds(MLPConfig(), SHORT, small_data, (3, 1, 2), cache=tmp_path)
    assert [call[1].seed for call in trainer.calls] == [3, 1, 2]
    assert all(call[1].epochs == SHORT.epochs for call in trainer.calls)
    assert len(histories) == 3
    assert run_seeds(MLPConfig(), SHORT, small_data, (3, 1, 2), cache=tmp_path) == histories
    assert len(trainer.calls) == 3
    with pytest.raises(ValueError, match="seeds is empty"):
        run_seeds(MLPConfig(), SHORT, small_data, (), cache=tmp_path)


# --- spread, tables and comparisons --------------------------------------------------------------------------------


def seed_runs(label, test_accs, *, losses=None, model=MLPConfig(), dataset="MNIST-10k subset", seeds=None):
    losses = losses or [0.1] * len(test_accs)
    histories = [fake_history(dataset, losses=(1.0, loss), test_acc=acc) for acc, loss in zip(test_accs, losses)]
    return SeedRuns(label, model, tuple(seeds or range(1, len(test_accs) + 1)), tuple(histories))


def test_seed_runs_give_one_value_per_seed_and_the_run_of_a_seed():
    runs = seed_runs("BN", [97.0, 98.0, 96.0], losses=[0.3, 0.2, 0.1], seeds=(5, 6, 7))
    assert runs.values("test_acc") == (97.0, 98.0, 96.0)
    assert runs.values("loss") == (0.3, 0.2, 0.1)  # the last epoch's training loss
    assert runs.spread("test_acc").mean == pytest.approx(97.0)
    assert runs.history(6).test_acc == 98.0
    assert runs.dataset == "MNIST-10k subset"
    with pytest.raises(ValueError, match="seed must be one of"):
        runs.history(1)
    with pytest.raises(ValueError, match="metric must be one of"):
        runs.values("accuracy")
    with pytest.raises(ValueError, match="equal length"):
        SeedRuns("x", MLPConfig(), (1, 2), (fake_history(),))


def test_runs_with_the_same_seeds_are_compared_paired_by_seed():
    a = seed_runs("a", [97.0, 97.2, 97.4, 97.1], seeds=(1, 2, 3, 4))
    b = seed_runs("b", [95.5, 95.0, 96.0, 95.2], seeds=(2, 1, 3, 4))  # the same seeds, in another order
    c = compare_runs(a, b)
    expected = compare([97.0, 97.2, 97.4, 97.1], [95.0, 95.5, 96.0, 95.2], paired=True)
    assert isinstance(c, RunComparison) and c.paired
    assert (c.difference, *c.ci, c.p) == pytest.approx((expected.difference, *expected.ci, expected.p))
    assert (c.a, c.b, c.metric) == ("a", "b", "test_acc") and c.supported


def test_runs_with_different_seeds_are_compared_by_welchs_test():
    a = seed_runs("a", [97.0, 97.2, 97.4], seeds=(1, 2, 3))
    b = seed_runs("b", [95.0, 95.5, 96.0], seeds=(4, 5, 6))
    c = compare_runs(a, b, "test_acc", level=0.99)
    expected = compare(a.values(), b.values(), paired=False, level=0.99)
    assert not c.paired and c.level == 0.99
    assert (c.df, *c.ci, c.p) == pytest.approx((expected.df, *expected.ci, expected.p))


def test_a_run_comparison_describes_itself_with_its_labels_and_unit():
    a = seed_runs("ReLU → BN", [97.0, 97.2, 97.4], losses=[0.02, 0.03, 0.025])
    b = seed_runs("BN → ReLU", [97.1, 97.0, 97.6], losses=[0.03, 0.01, 0.02])
    text = compare_runs(a, b).describe()
    assert text.startswith("ReLU → BN scores 0.03 points lower than BN → ReLU (95 % CI ")
    assert text.endswith("the seeds do not support a difference.")
    loss = compare_runs(a, b, "loss").describe(verb="is")
    assert loss.startswith("ReLU → BN is 0.0050 higher than BN → ReLU (95 % CI ") and "points" not in loss


def test_a_comparison_needs_two_seeds_per_variant():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        compare_runs(seed_runs("a", [90.0]), seed_runs("b", [91.0, 92.0]))


def test_a_metric_that_was_not_recorded_says_how_to_record_it():
    epochs = [EpochStats(1, 0.5, None, 70.0, 0.1)]
    runs = SeedRuns("a", MLPConfig(), (1,), (History("MNIST-10k subset", "cpu", epochs, 90.0),))
    with pytest.raises(ValueError, match="record_train_acc=True"):
        runs.values("train_acc")


def test_the_results_table_has_every_variant_and_seed_and_names_the_data_set():
    runs = {
        "BN before ReLU": seed_runs("BN before ReLU", [97.11, 97.52, 97.33], losses=[0.01, 0.02, 0.03]),
        "no BN": seed_runs("no BN", [96.01, 95.5, 96.9], losses=[0.2, 0.1, 0.3]),
    }
    table = results_table(runs)
    assert table.dataset == "MNIST-10k subset" and table.seeds == (1, 2, 3)
    assert [label for label, _ in table.rows] == ["BN before ReLU", "no BN"]
    assert table.rows[0][1][0].values == (97.11, 97.52, 97.33)
    assert table.rows[1][1][1].values == (0.2, 0.1, 0.3)
    text, html = str(table), table._repr_html_()
    for shown in (text, html):
        assert "MNIST-10k subset" in shown
        assert "97.32 ± 0.21" in shown and "0.0200 ± 0.0100" in shown
        assert "97.11, 97.52, 97.33" in shown and "96.01, 95.50, 96.90" in shown
    assert html.count("<tr>") == 3  # header and one row per variant


def test_results_table_refuses_what_cannot_share_a_table():
    with pytest.raises(ValueError, match="runs is empty"):
        results_table({})
    with pytest.raises(ValueError, match="metrics must be"):
        results_table({"a": seed_runs("a", [1.0, 2.0])}, metrics=("accuracy",))
    with pytest.raises(ValueError, match="same seeds"):
        results_table({"a": seed_runs("a", [1.0, 2.0]), "b": seed_runs("b", [1.0, 2.0], seeds=(3, 4))})


def test_the_comparisons_table_shows_each_comparison_with_its_interval_p_and_verdict():
    a, b, c = seed_runs("a", [97.0, 97.2, 97.4]), seed_runs("b", [95.0, 95.5, 96.0]), seed_runs("c", [97.1, 97.0, 97.6])
    first, second = compare_runs(a, b), compare_runs(a, c)
    table = comparisons_table([first, second], caption="test accuracy, MNIST-10k subset")
    assert table.caption == "test accuracy, MNIST-10k subset"
    assert table.header == ("a", "b", "mean(a) - mean(b)", "95 % CI", "p", "verdict (by the seeds)")
    interval = f"{first.ci[0]:+.2f} to {first.ci[1]:+.2f}"
    assert table.rows[0] == ("a", "b", "+1.70", interval, f"{first.p:.3f}", "supported")
    assert table.rows[1][:2] == ("a", "c") and table.rows[1][5] == "not supported"
    assert "not supported" in str(table) and table._repr_html_().count("<tr>") == 3
    welch = compare_runs(a, seed_runs("d", [95.0, 95.5, 96.0], seeds=(7, 8, 9)))
    assert comparisons_table([welch], caption="x").rows[0][5] == "supported (Welch)"
    with pytest.raises(ValueError, match="comparisons is empty"):
        comparisons_table([], caption="x")


def test_run_variants_trains_every_variant_with_every_seed(small_data, tmp_path, trainer):
    variants = {"before": MLPConfig(), "after": MLPConfig(placement="after")}
    runs = run_variants(variants, SHORT, small_data, (1, 2), cache=tmp_path)
    assert list(runs) == ["before", "after"]
    assert runs["after"].model == variants["after"] and runs["after"].seeds == (1, 2)
    assert [(call[0].placement, call[1].seed) for call in trainer.calls] == [
        ("before", 1), ("before", 2), ("after", 1), ("after", 2)
    ]
    with pytest.raises(ValueError, match="variants is empty"):
        run_variants({}, SHORT, small_data, (1, 2), cache=tmp_path)


# --- what the cache key holds ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OtherConfig(MLPConfig):
    """Another kind of model configuration with the very same fields."""


def test_the_key_tells_model_config_types_and_thread_counts_apart(small_data):
    key = run_key(MLPConfig(), SHORT, small_data, device="cpu", threads=1)
    assert run_key(MLPConfig(), SHORT, small_data, device="cpu", threads=1) == key
    assert run_key(OtherConfig(), SHORT, small_data, device="cpu", threads=1) != key
    assert run_key(MLPConfig(), SHORT, small_data, device="cpu", threads=2) != key
    assert run_key(MLPConfig(), SHORT, small_data, device="cpu") == run_key(
        MLPConfig(), SHORT, small_data, device="cpu", threads=torch.get_num_threads())


@pytest.mark.parametrize("config", [{"hidden": (75, 45)}, MLPConfig, None])
def test_the_key_needs_a_frozen_dataclass_model_config(small_data, config):
    with pytest.raises(ValueError, match="model_config must be a model configuration"):
        run_key(config, SHORT, small_data)


def test_run_records_and_keys_the_threads_it_computed_with(small_data, tmp_path, monkeypatch):
    one = run(MLPConfig(), SHORT, small_data, cache=tmp_path, device="cpu", threads=1)
    assert one.threads == 1
    monkeypatch.setattr(experiments, "train_model", must_not_train)
    assert run(MLPConfig(), SHORT, small_data, cache=tmp_path, device="cpu", threads=1) == one
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        run(MLPConfig(), SHORT, small_data, cache=tmp_path, device="cpu", threads=0)


# --- a trained model with its history, cached --------------------------------------------------------------------


def test_run_with_model_caches_weights_and_shares_the_history_with_run(small_data, tmp_path):
    config, training = MLPConfig(), TrainConfig(epochs=1, batch_size=100)
    model, history = run_with_model(config, training, small_data, cache=tmp_path, device="cpu")
    assert len(list(tmp_path.glob("model-*.pt"))) == 1
    assert run(config, training, small_data, cache=tmp_path, device="cpu") == history  # read from the cache
    again, cached = run_with_model(config, training, small_data, cache=tmp_path, device="cpu")
    assert cached == history
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_run_with_model_retrains_when_the_weights_are_unreadable(small_data, tmp_path):
    config, training = MLPConfig(), TrainConfig(epochs=1, batch_size=100)
    model, history = run_with_model(config, training, small_data, cache=tmp_path, device="cpu")
    weights = next(tmp_path.glob("model-*.pt"))
    weights.write_bytes(b"not a checkpoint")
    again, _ = run_with_model(config, training, small_data, cache=tmp_path, device="cpu")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.load(weights, weights_only=True).keys() == model.state_dict().keys()


# --- seeds in worker processes -----------------------------------------------------------------------------------

DROPOUT = MLPConfig(placement="after", dropout=0.3)
TWO_EPOCHS = TrainConfig(epochs=2, batch_size=100)


def same_bits(a: tuple, b: tuple) -> bool:
    """Two (model, History) pairs with bitwise equal parameters, buffers and histories (but for the seconds)."""
    (model_a, history_a), (model_b, history_b) = a, b
    states = zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True)
    return without_seconds(history_a) == without_seconds(history_b) and all(torch.equal(x, y) for x, y in states)


def test_a_seed_gives_the_same_bits_alone_and_in_a_worker_beside_other_seeds(small_data, tmp_path, monkeypatch):
    threads = max(1, torch.get_num_threads() // 2)
    beside = run_seeds_with_models(DROPOUT, TWO_EPOCHS, small_data, (1, 2, 3), cache=tmp_path / "a", device="cpu",
                                   workers=2, progress=False)
    alone = run_seeds_with_models(DROPOUT, TWO_EPOCHS, small_data, (2,), cache=tmp_path / "b", device="cpu",
                                  workers=2, progress=False)  # one seed: trained in this process
    assert same_bits(beside[1], alone[0])
    assert not same_bits(beside[0], alone[0])  # and the seeds do differ
    assert all(history.threads == threads for _, history in beside + alone)

    monkeypatch.setattr(experiments, "train_model", must_not_train)  # the workers stored every run
    cached = run_seeds(DROPOUT, TWO_EPOCHS, small_data, (3, 1), cache=tmp_path / "a", device="cpu", workers=2)
    assert cached == [beside[2][1], beside[0][1]]


def test_a_failing_worker_raises_its_error_with_the_workers_traceback(small_data, tmp_path):
    too_large = TrainConfig(epochs=1, batch_size=5_000)  # train() refuses it, inside the worker
    with pytest.raises(ValueError, match="larger than the training split") as raised:
        run_seeds(MLPConfig(), too_large, small_data, (1, 2), cache=tmp_path, device="cpu", workers=2, progress=False)
    remote = str(raised.value.__cause__)
    assert "Traceback" in remote and "training.py" in remote
    assert any("in a worker process" in note for note in getattr(raised.value, "__notes__", ["in a worker process"]))
    assert list(tmp_path.glob("run-*.json")) == []


def test_seeds_run_in_this_process_where_processes_cannot_start(small_data, tmp_path, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(_workers.concurrent.futures, "ProcessPoolExecutor", no_processes)
    with pytest.warns(UserWarning, match="could not be started.*in this process instead, with 1 thread"):
        fallback = run_seeds_with_models(DROPOUT, TWO_EPOCHS, small_data, (1, 2), cache=tmp_path, device="cpu",
                                         workers=max(2, torch.get_num_threads()), progress=False)
    assert all(history.threads == 1 for _, history in fallback)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert same_bits(fallback[1], run_with_model(DROPOUT, dataclasses.replace(TWO_EPOCHS, seed=2), small_data,
                                                     cache=tmp_path / "alone", device="cpu", threads=1))


def test_one_worker_trains_in_this_process_with_all_threads(small_data, tmp_path, trainer):
    run_seeds(MLPConfig(), SHORT, small_data, (1, 2), cache=tmp_path, device="cpu", workers=1)
    assert len(trainer.calls) == 2  # the stand-in trainer only runs in this process
    paths = {experiments.cache_paths(MLPConfig(), dataclasses.replace(SHORT, seed=s), small_data, cache=tmp_path,
                                     device="cpu", threads=torch.get_num_threads())[0] for s in (1, 2)}
    assert paths == set(tmp_path.glob("run-*.json"))


def test_bnlab_workers_sets_the_number_of_workers(monkeypatch):
    monkeypatch.delenv("BNLAB_WORKERS", raising=False)
    assert seed_workers(device="cpu") == torch.get_num_threads()
    monkeypatch.setenv("BNLAB_WORKERS", "3")
    assert seed_workers(device="cpu") == 3
    assert seed_workers(1, device="cpu") == 1  # the argument wins
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("BNLAB_WORKERS", bad)
        with pytest.raises(ValueError, match=r"\$BNLAB_WORKERS must be a positive number"):
            seed_workers(device="cpu")
    with pytest.raises(ValueError, match="workers must be a positive number"):
        seed_workers(0, device="cpu")


def test_run_variants_shows_one_progress_bar_per_variant(small_data, tmp_path, trainer, capsys):
    run_variants({"BN before": MLPConfig(), "BN after": MLPConfig(placement="after")}, SHORT, small_data, (1, 2),
                 cache=tmp_path)
    shown = capsys.readouterr().err
    assert "BN before: " in shown and "BN after: " in shown and "0/2" in shown
    run_variants({"BN before": MLPConfig()}, SHORT, small_data, (1, 2), cache=tmp_path)
    assert capsys.readouterr().err == ""  # everything cached: no bar


def test_stacked_seeds_are_cached_apart_from_seeds_trained_alone_and_with_their_stack(small_data, tmp_path,
                                                                                     monkeypatch):
    from bnlab.fast import stacked as stacked_module

    calls = []
    real = stacked_module.train_stacked

    def counting(model_config, data, config, seeds, **kwargs):
        calls.append(seeds)
        return real(model_config, data, config, seeds, **kwargs)

    monkeypatch.setattr(stacked_module, "train_stacked", counting)
    stacked = run_seeds(MLPConfig(), SHORT, small_data, (2, 1), cache=tmp_path, device="cpu", stacked=True)[::-1]
    alone = run_seeds(MLPConfig(), SHORT, small_data, (1, 2), cache=tmp_path, device="cpu", workers=1)
    assert len(list(tmp_path.glob("run-*.json"))) == 4
    for s, a in zip(stacked, alone):
        assert s.final.loss == pytest.approx(a.final.loss, rel=1e-5) and s.threads == a.threads
    assert run_seeds(MLPConfig(), SHORT, small_data, (1, 2), cache=tmp_path, device="cpu", stacked=True) == stacked
    assert calls == [(1, 2)]  # from the cache
    with_model = run_seeds_with_models(MLPConfig(), SHORT, small_data, (2,), cache=tmp_path, device="cpu", stacked=True)
    assert calls == [(1, 2), (2,)]  # another stack: trained anew
    assert with_model[0][1].final.loss == pytest.approx(stacked[1].final.loss, rel=1e-5)
