"""The report read back from crafted event files with known values (moth_tf.reporting.records writes
them as the phases do; tf.summary for the backdoor and NC phases' tags)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from moth_tf.reporting import comparison
from moth_tf.evaluation import distance
from moth_tf.reporting import report_figures
from moth_tf.reporting import reader
from moth_tf.reporting import records

N = 4
CLASSES = ["cat", "dog", "emu", "fox"]


def _config(method, seed=0, mode="nat", model_path=None):
  return {"data": {"dataset": "toy"}, "model": "tiny", "method": method, "seed": seed,
          "model_path": model_path,
          "harden": {"mode": mode, "learning_rate": 0.01, "steps": 20, "portion": 0.5}}


def _matrix(scale, seed):
  rng = np.random.default_rng(seed)
  m = scale * (1.0 + rng.random((N, N)))
  np.fill_diagonal(m, np.nan)
  return m


def _write_run(run_dir, method, accuracy, matrix, seed=0, wall=None, robust=None, mode="nat",
               finish=True):
  phase = "train" if method == "natural" else "harden"
  config = _config(method, seed, mode)
  records.write_run_metadata(run_dir, phase, config, CLASSES, ["prog", f"--method={method}"])
  if finish:
    metrics = {"test_accuracy": accuracy}
    if phase == "harden":
      metrics.update(wall_seconds=wall, steps=20)
    records.write_final_metrics(run_dir, phase, metrics)
  if matrix is not None:
    records.write_run_metadata(run_dir, "distance", config, CLASSES, session=False)
    records.write_matrices(run_dir, "distance", {"matrix": matrix})
    finite = matrix[np.isfinite(matrix)]
    records.write_final_metrics(run_dir, "distance", {"mean": float(finite.mean())})
  if robust is not None:
    records.write_run_metadata(run_dir, "robustness", config, CLASSES, session=False)
    records.write_final_metrics(run_dir, "robustness", {"accuracy": robust})


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
  """natural (1 run), moth (2 seeds, in two workdirs), finetune (unfinished), a backdoor phase and
  an NC detect phase on the natural run."""
  root = str(tmp_path_factory.mktemp("logs"))
  _write_run(os.path.join(root, "toy_tiny_natural"), "natural", 0.90, _matrix(1.0, 0),
             robust=0.5)
  _write_run(os.path.join(root, "a", "toy_tiny_moth"), "moth", 0.92, _matrix(2.0, 1), seed=0,
             wall=100.0, robust=0.6)
  _write_run(os.path.join(root, "b", "toy_tiny_moth"), "moth", 0.94, _matrix(3.0, 2), seed=1,
             wall=140.0, robust=0.7)
  _write_run(os.path.join(root, "toy_tiny_finetune"), "finetune", None, None, finish=False)
  natural_logs = os.path.join(root, "toy_tiny_natural", "logs")
  with tf.summary.create_file_writer(os.path.join(natural_logs, "backdoor")).as_default():
    for tag, value in (("c_acc", 0.89), ("asr", 0.97), ("r_acc", 0.02)):
      tf.summary.scalar(f"backdoor/{tag}", value, step=0)
  with tf.summary.create_file_writer(os.path.join(natural_logs, "detect")).as_default():
    tf.summary.write("detect/l1_norms", tf.constant([10.0, 2.0, 11.0, 12.0]), step=0)
    tf.summary.write("detect/anomaly_index", tf.constant([0.3, 3.1, 0.1, 0.6]), step=0)
    tf.summary.text("detect/flagged", "1", step=0)
  return root


def _rows(groups):
  assert len(groups) == 1
  return {row["method"]: row for row in groups[0].rows}


def test_matrices_and_metrics_read_back_exactly(tmp_path):
  run_dir = str(tmp_path / "toy_tiny_natural")
  matrix = _matrix(1.7, 5)
  per_seed = np.stack([matrix, matrix + 1])
  _write_run(run_dir, "natural", 0.8765432101234567, None)
  records.write_matrices(run_dir, "distance", {"matrix": matrix, "per_seed": per_seed})
  (run,) = reader.read_runs(str(tmp_path))
  np.testing.assert_array_equal(run.latest("distance/matrix"), matrix)  # NaN diagonal kept.
  np.testing.assert_array_equal(run.latest("distance/per_seed"), per_seed)
  # Scalars are float32 in TensorBoard: the value comes back to float32 precision.
  assert run.latest("train/test_accuracy") == pytest.approx(0.8765432101234567, rel=1e-7)
  assert run.metadata["dataset"] == "toy" and run.metadata["method"] == "natural"
  assert run.metadata["class_names"] == CLASSES
  assert run.metadata["flags"] == ["prog", "--method=natural"]
  assert run.problems == []


def test_table_equals_what_was_written(logdir):
  groups = comparison.build_groups(reader.read_runs(logdir), "natural")
  rows = _rows(groups)
  assert [r["method"] for r in groups[0].rows] == ["natural", "moth", "finetune"]
  assert (groups[0].dataset, groups[0].model) == ("toy", "tiny")
  assert groups[0].class_names == CLASSES
  natural, moth = rows["natural"], rows["moth"]
  assert natural["test_accuracy"] == pytest.approx(0.90)
  assert natural["robust_accuracy"] == pytest.approx(0.5)
  assert natural["backdoor_asr"] == pytest.approx(0.97)
  assert natural["enlargement_mean_relative"] is None  # The baseline against itself.
  # Two seeds: mean and sample standard deviation.
  assert moth["runs"] == 2 and moth["seeds"] == "0 1"
  assert moth["test_accuracy"] == pytest.approx(0.93)
  assert moth["test_accuracy_std"] == pytest.approx(np.std([0.92, 0.94], ddof=1), rel=1e-5)
  assert moth["accuracy_change"] == pytest.approx(0.03, rel=1e-5)
  assert moth["robust_accuracy"] == pytest.approx(0.65)
  base = _matrix(1.0, 0)
  means = [np.nanmean(_matrix(2.0, 1)), np.nanmean(_matrix(3.0, 2))]
  assert moth["mean_distance"] == pytest.approx(np.mean(means), rel=1e-6)
  enlargements = [distance.enlargement(base, _matrix(s, k)) for s, k in ((2.0, 1), (3.0, 2))]
  assert moth["enlargement_mean_relative"] == pytest.approx(
      np.mean([e["mean_relative_change"] for e in enlargements]))
  assert moth["enlargement_ratio_of_means"] == pytest.approx(
      np.mean([e["ratio_of_means"] for e in enlargements]))
  assert moth["wall_seconds"] == pytest.approx(120.0)
  assert moth["time_vs_moth"] == pytest.approx(1.0)
  assert moth["steps"] == 20
  assert moth["notes"] == ""


def test_unfinished_run_is_marked_not_fatal(logdir):
  rows = _rows(comparison.build_groups(reader.read_runs(logdir), "natural"))
  finetune = rows["finetune"]
  assert finetune["test_accuracy"] is None
  assert "harden unfinished" in finetune["notes"]
  text = comparison.to_markdown(comparison.build_groups(reader.read_runs(logdir), "natural"))
  assert "| finetune (!) | 1 |" in text
  assert "harden unfinished (still running, or killed)" in text
  assert "0.9300 ± 0.0141" in text  # moth's two seeds.


def test_truncated_event_file_is_reported(tmp_path):
  run_dir = str(tmp_path / "toy_tiny_moth")
  _write_run(run_dir, "moth", 0.92, _matrix(2.0, 1), wall=10.0)
  distance_dir = os.path.join(run_dir, "logs", "distance")
  # The matrix's file: cut in the middle of its last record, as a killed writer leaves it.
  files = sorted(os.listdir(distance_dir))
  victim = os.path.join(distance_dir, [f for f in files if os.path.getsize(
      os.path.join(distance_dir, f)) > 200][-1])
  with open(victim, "rb+") as f:
    f.truncate(os.path.getsize(victim) - 7)
  (run,) = reader.read_runs(str(tmp_path))
  assert any("truncated or corrupt event file" in p and os.path.basename(victim) in p
             for p in run.problems), run.problems
  rows = _rows(comparison.build_groups([run], "natural"))
  assert rows["moth"]["test_accuracy"] == pytest.approx(0.92)  # What is there is still shown.
  assert "truncated" in rows["moth"]["notes"]


def test_csv_and_json_round_trip(logdir):
  groups = comparison.build_groups(reader.read_runs(logdir), "natural")
  rows = [row for g in groups for row in g.rows]
  assert comparison.rows_from_csv(comparison.to_csv(groups)) == rows
  assert comparison.rows_from_json(comparison.to_json(groups)) == rows


def test_baseline_flag_and_missing_baseline(logdir):
  groups = comparison.build_groups(reader.read_runs(logdir), "moth")
  rows = _rows(groups)
  assert [r["method"] for r in groups[0].rows][0] == "moth"
  assert rows["natural"]["accuracy_change"] == pytest.approx(0.90 - 0.93, rel=1e-5)
  text = comparison.to_markdown(comparison.build_groups(reader.read_runs(logdir), "nad"))
  assert "no run labelled 'nad' in this group" in text


def test_measurement_of_a_model_path_joins_the_run_that_made_it(tmp_path):
  """The baselines benchmark measures MOTH-on-adv_train through --model_path, into a folder of
  its own: those figures belong to the hardened run's row."""
  workdir = tmp_path / "w"
  hardened = str(workdir / "toy_external_model_moth")
  records.write_run_metadata(hardened, "harden", _config(
      "moth", mode="adv", model_path="/elsewhere/toy_tiny_adv_train/model.keras"), CLASSES)
  records.write_final_metrics(hardened, "harden", {"test_accuracy": 0.9, "wall_seconds": 5})
  measured = str(workdir / "toy_external_model")
  config = _config("natural", model_path=os.path.join(hardened, "model.keras"))
  records.write_run_metadata(measured, "robustness", config, CLASSES, session=False)
  records.write_final_metrics(measured, "robustness", {"accuracy": 0.75})
  # Alone (the hardened run not copied along), it is a row of its own: an external model.
  alone = reader.read_runs(measured)
  assert [r.metadata["method"] for r in alone] == ["external"]
  assert [r["method"] for r in comparison.build_groups(alone)[0].rows] == [
      "external from toy_external_model_moth"]
  runs = reader.read_runs(str(tmp_path))
  assert len(runs) == 1 and runs[0].merged_from == [os.path.join("w", "toy_external_model")]
  rows = _rows(comparison.build_groups(runs, "natural"))
  assert rows["moth (adv) from adv_train"]["robust_accuracy"] == pytest.approx(0.75)


def test_hparams_listed_through_tensorboards_data_api(logdir):
  """What the HParams dashboard lists: TensorBoard's HParams plugin over its data provider, asked
  what the dashboard asks (POST /session_groups): one session group per run directory, its
  metadata as hparams, the phases' final scalars as metrics."""
  import json
  from tensorboard.backend.event_processing import data_provider
  from tensorboard.plugins import base_plugin
  from tensorboard.plugins.hparams import hparams_plugin
  from werkzeug import test as werkzeug_test
  from werkzeug import wrappers

  multiplexer = reader.load_multiplexer(logdir)
  provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
  plugin = hparams_plugin.HParamsPlugin(base_plugin.TBContext(
      logdir=logdir, multiplexer=multiplexer, data_provider=provider))
  app = plugin.get_plugin_apps()["/session_groups"]
  request = {"experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
             "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                 "STATUS_RUNNING"]}
  response = werkzeug_test.Client(app, wrappers.Response).post(
      "/session_groups", data=json.dumps(request), content_type="application/json")
  assert response.status_code == 200
  groups = json.loads(response.get_data())["sessionGroups"]
  # One row per run directory and seed (runs of one configuration and seed would share one).
  assert sorted((g["hparams"]["run"], g["hparams"]["seed"]) for g in groups) == [
      ("toy_tiny_finetune", 0), ("toy_tiny_moth", 0), ("toy_tiny_moth", 1),
      ("toy_tiny_natural", 0)]
  moth = next(g for g in groups if g["hparams"]["run"] == "toy_tiny_moth"
              and g["hparams"]["seed"] == 1)
  hparams = moth["hparams"]
  assert (hparams["dataset"], hparams["model"], hparams["method"], hparams["harden.mode"]) == (
      "toy", "tiny", "moth", "nat")
  assert hparams["harden.learning_rate"] == pytest.approx(0.01)
  metrics = {(m["name"]["group"], m["name"]["tag"]): m["value"] for m in moth["metricValues"]}
  assert metrics[("harden", "harden/test_accuracy")] == pytest.approx(0.94)
  assert metrics[("distance", "distance/mean")] == pytest.approx(np.nanmean(_matrix(3.0, 2)))


def test_figures(logdir, tmp_path):
  groups = comparison.build_groups(reader.read_runs(logdir), "natural")
  written = report_figures.write_figures(groups, str(tmp_path))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["toy_tiny_distance_change.png", "toy_tiny_distance_heatmaps.png",
                   "toy_tiny_natural_toy_tiny_natural_nc_anomaly_index.png"]
  for path in written:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_runs_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no TensorBoard event files under"):
    reader.read_runs(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    reader.read_runs(str(tmp_path / "missing"))


def test_pair_distance_and_previous_asr_figures(tmp_path):
  """MOTH's per-period pair distances and previous-trigger ASRs (the paper's Fig. 8 and 9) read
  back and drawn: the most and least often scheduled pairs, a resumed step's rows replaced."""
  run_dir = str(tmp_path / "toy_tiny_moth")
  _write_run(run_dir, "moth", 0.9, None, wall=10.0)
  periods = [(2, [(0, 1, 1.0, 2.0), (2, 3, 3.0, 4.0)]), (4, [(1, 0, 5.0, 6.0), (2, 3, 7.0, 8.0)]),
             (6, [(0, 1, 9.0, 9.5), (3, 2, 1.5, 2.5)]), (8, [(0, 2, 0.5, 0.25), (1, 3, 1.0, 1.0)])]
  with tf.summary.create_file_writer(os.path.join(run_dir, "logs", "harden_moth")).as_default():
    records.write_matrix(records.PERIOD_SIZES_TAG, np.zeros((2, 4)), step=8)
    for step, rows in periods:  # Step 8 again, as a resumed run logs it: the later rows count.
      records.write_matrix(records.PERIOD_SIZES_TAG, np.array(rows), step=step)
    for step, rows in ((3, [(0, 1, 0, 0.5), (1, 0, 0, 0.375)]), (5, [(3, 2, 0, 0.625)])):
      records.write_matrix(records.PREVIOUS_ASR_TAG, np.array(rows), step=step)
  run, = reader.read_runs(str(tmp_path))
  series, counts = report_figures.pair_distance_series(run)
  assert counts == {(0, 1): 3, (2, 3): 3, (0, 2): 1, (1, 3): 1}
  steps, sizes = series[(0, 1)]
  np.testing.assert_array_equal(steps, [2, 4, 6])
  np.testing.assert_array_equal(sizes, [[1.0, 2.0], [6.0, 5.0], [9.0, 9.5]])  # s < t oriented.
  np.testing.assert_array_equal(series[(2, 3)][1], [[3.0, 4.0], [7.0, 8.0], [2.5, 1.5]])
  assert report_figures.selected_pairs(counts, most=1, least=2) == [(0, 1), (0, 2), (1, 3)]
  steps, pairs, asr = report_figures.previous_asr_series(run)
  np.testing.assert_array_equal(steps, [3, 3, 5])
  np.testing.assert_array_equal(pairs, [[0, 1], [0, 1], [2, 3]])
  np.testing.assert_array_equal(asr, [0.5, 0.375, 0.625])
  groups = comparison.build_groups([run], "natural")
  written = report_figures.write_figures(groups, str(tmp_path / "report"))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["toy_tiny_pair_distance.png", "toy_tiny_previous_trigger_asr.png"]


def test_ablations_make_rows_of_their_own():
  def label(method="moth", **harden):
    return comparison.config_label({"method": method, "mode": harden.pop("mode", "nat"),
                                    "config": {"harden": harden}})
  assert label() == label(generation="two_sided", schedule="karm", trigger_reuse=True) == "moth"
  assert label(generation="one_sided", schedule="random", trigger_reuse=False, mode="adv") == (
      "moth (adv, one_sided, random schedule, no trigger reuse)")
  assert label(schedule="round_robin") == "moth (round_robin schedule)"
  assert label("pairwise", schedule="random") == "pairwise"  # Pairwise has its own sweep.
  assert label("natural", generation="one_sided") == "natural"
