"""The worker thread, its queue and busy state, on slicer-core nodes (no Qt).

A slow stand-in engine blocks on an event until the test releases it, so "mid-run" is a state the test
controls (no sleeps as synchronisation). The GUI polls the runner with a QTimer; here the test polls.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.register_assert_rewrite("conftest_slicer")
pytest_plugins = ["conftest_slicer"]

from conftest_slicer import FakeSegmenter, add_points, add_volume, segment_array  # noqa: E402
from ProMISeLib.errors import InvalidInputError  # noqa: E402

WAIT_S = 20.0


class SlowSegmenter(FakeSegmenter):
    """The stand-in engine, held at each call until ``release`` is set (then it clears it for the next call)."""

    def __init__(self, entered: threading.Event, **options):
        super().__init__(**options)
        self.entered = entered
        self.release = threading.Event()
        self.threads = []

    def segment(self, *args, **kwargs):
        self.threads.append(threading.current_thread())
        self.entered.set()
        cancel = kwargs.get("cancel")
        while not self.release.wait(0.01):
            if cancel is not None and cancel():
                break
        self.release.clear()
        return super().segment(*args, **kwargs)


def slow_logic(radius_mm=3.0):
    from ProMISeSlicer.logic import ProMISeModuleLogic

    engines = []
    entered = threading.Event()  # set when the (held) engine is entered

    def factory(model, device, runtime, prompts):
        engines.append(SlowSegmenter(entered, model=model, device=device, runtime=runtime, prompts=prompts,
                                     radius_mm=radius_mm))
        return engines[-1]

    logic = ProMISeModuleLogic(segmenterFactory=factory)
    logic.entered = entered
    return logic, engines


def wait_until_held(logic, engines) -> SlowSegmenter:
    """Block until the worker is inside the held engine; returns that engine."""
    assert logic.entered.wait(WAIT_S), "the worker never reached the engine"
    logic.entered.clear()
    return engines[-1]


def scene_with_point():
    volume = add_volume(np.zeros((12, 24, 24), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "scan")
    points = add_points([("lesion", (6.0, 8.0, 10.0))])
    return volume, points


def job(logic, volume, points, finished=None, **options):
    from ProMISeSlicer.worker import Job

    return Job(lambda: logic.prepareRun(volume, points, **options), logic.computeRun, logic.applyRun, finished)


def test_busy_during_a_run_refuses_segment_and_undo_and_the_engine_runs_off_the_main_thread(slicer_env):
    logic, engines = slow_logic()
    volume, points = scene_with_point()
    seen = []  # the busy flag as every listener sees it
    logic.runner.listeners.append(lambda: seen.append(logic.busy))

    assert logic.runner.submit(job(logic, volume, points)) == "started"
    assert seen == [True], "busy is set before the listeners (the buttons) are told"
    engine_entered = wait_until_held(logic, engines)
    assert logic.busy and not logic.canUndo()
    with pytest.raises(InvalidInputError, match="running"):
        logic.undo()
    with pytest.raises(InvalidInputError, match="already running"):
        logic.segment(volume, points)
    assert logic.findSegmentationFor(volume) is None, "nothing is written mid-run"

    engine_entered.release.set()
    outcomes = logic.runner.runUntilIdle(WAIT_S)
    assert [o.status for o in outcomes] == ["done"]
    run = outcomes[0].value
    assert engine_entered.threads[0] is not threading.main_thread()
    assert not logic.busy and logic.canUndo() and seen[-1] is False
    assert segment_array(run.segmentationNode, run.objects[0].segmentId, volume)[5, 8, 6] == 1
    logic.runner.close()


def test_the_latest_edit_made_mid_run_is_queued_and_runs_next(slicer_env):
    import vtk

    logic, engines = slow_logic()
    volume, points = scene_with_point()
    finished = []
    assert logic.runner.submit(job(logic, volume, points, finished=finished.append)) == "started"
    # two edits while the first run is held: only the latest is queued, and it reads the points when it starts
    points.SetNthControlPointPosition(0, vtk.vtkVector3d(10.0, 8.0, 10.0))
    first_edit = job(logic, volume, points, finished=finished.append)
    assert logic.runner.submit(first_edit) == "queued"
    points.SetNthControlPointPosition(0, vtk.vtkVector3d(14.0, 12.0, 10.0))
    latest = job(logic, volume, points, finished=finished.append)
    assert logic.runner.submit(latest) == "queued" and logic.runner.queued is latest

    engine = wait_until_held(logic, engines)
    engine.release.set()
    assert logic.runner.waitForResult(WAIT_S)
    outcomes = logic.runner.poll()
    assert [o.status for o in outcomes] == ["done"]
    assert logic.busy, "the queued edit started at once: still busy"
    engine.release.set()
    outcomes += logic.runner.runUntilIdle(WAIT_S)
    assert [o.job for o in finished] == [finished[0].job, latest], "the first edit was replaced by the latest"
    assert len(engine.calls) == 2
    assert tuple(engine.calls[-1]["voxels"][0]) == (5, 12, 14), "the queued run used the latest position"
    node = logic.findSegmentationFor(volume)
    assert node.GetSegmentation().GetNumberOfSegments() == 1, "the edit refined the same segment"
    mask = segment_array(node, node.GetSegmentation().GetNthSegmentID(0), volume)
    assert mask[5, 12, 14] == 1 and mask[5, 8, 6] == 0
    logic.runner.close()


def test_cancel_mid_run_writes_nothing_and_drops_the_queued_edit(slicer_env):
    from conftest_slicer import scene_state

    logic, engines = slow_logic()
    volume, points = scene_with_point()
    before = scene_state(slicer_env.scene)
    logic.runner.submit(job(logic, volume, points))
    logic.runner.submit(job(logic, volume, points))
    wait_until_held(logic, engines)
    logic.requestCancel()
    assert logic.runner.queued is None
    outcomes = logic.runner.runUntilIdle(WAIT_S)
    assert [o.status for o in outcomes] == ["cancelled"]
    assert scene_state(slicer_env.scene) == before and not logic.busy
    logic.runner.close()


def test_a_result_that_arrives_after_cancel_is_not_applied(slicer_env):
    from conftest_slicer import fake_factory
    from ProMISeSlicer.logic import ProMISeModuleLogic
    from ProMISeSlicer.worker import Job

    logic = ProMISeModuleLogic(segmenterFactory=fake_factory())
    volume, points = scene_with_point()
    computed = threading.Event()

    def compute(prepared, progress, cancel):
        result = logic.computeRun(prepared, progress)  # ignores cancel: finishes regardless
        computed.set()
        return result

    logic.runner.submit(Job(lambda: logic.prepareRun(volume, points), compute, logic.applyRun))
    assert computed.wait(WAIT_S) and logic.runner.waitForResult(WAIT_S)
    logic.requestCancel()
    outcomes = logic.runner.poll()
    assert [o.status for o in outcomes] == ["cancelled"] and logic.findSegmentationFor(volume) is None
    logic.runner.close()


def test_bad_input_is_reported_at_submit_and_leaves_the_runner_idle(slicer_env):
    logic, engines = slow_logic()
    volume, _ = scene_with_point()
    outside = add_points([("far", (5000.0, 0.0, 0.0))], "outside")
    finished = []
    assert logic.runner.submit(job(logic, volume, outside, finished=finished.append)) == "failed"
    assert not logic.busy and engines == []
    assert finished[0].status == "failed" and "outside" in str(finished[0].error)


@pytest.mark.slow
def test_real_engine_runs_on_the_worker_and_a_queued_click_refines_the_segment(slicer_env):
    """The real engine on brain1: a click, then a second click queued mid-run, refining the same segment."""
    from conftest_slicer import load_case_arrays
    from ProMISeLib.io.sample_data import lesion_click
    from ProMISeSlicer import nodes
    from ProMISeSlicer.logic import ProMISeModuleLogic

    pytest.importorskip("torch")
    image, label, source = load_case_arrays("brain1")
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    direction = np.array(source.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction @ np.diag(source.GetSpacing())
    ijk_to_lps[:3, 3] = source.GetOrigin()
    volume = add_volume(image, lps_to_ras @ ijk_to_lps, "brain1")
    k, j, i = lesion_click(label != 0)
    ras = (lps_to_ras @ ijk_to_lps @ np.array([i, j, k, 1.0]))[:3]
    points = add_points([("tumour", ras)])
    logic = ProMISeModuleLogic()
    logic.runOptions.update(device="cpu")
    session_node = logic.outputSegmentationFor(volume)
    segmentId = session_node.GetSegmentation().AddEmptySegment("", "tumour")
    nodes.set_point_segment_id(points, 0, segmentId)

    def run_job():
        return job(logic, volume, points, segmentIds=[segmentId], **logic.runOptions)

    assert logic.runner.submit(run_job()) == "started"
    # a second click on another tumour voxel while the first run is going: queued, then run
    others = np.argwhere(label != 0)
    kk, jj, ii = others[len(others) // 3]
    second = points.AddControlPoint(*[float(v) for v in (lps_to_ras @ ijk_to_lps @ np.array([ii, jj, kk, 1.0]))[:3]])
    nodes.set_point_segment_id(points, second, segmentId)
    assert logic.runner.submit(run_job()) == "queued"
    outcomes = logic.runner.runUntilIdle(600.0)
    assert [o.status for o in outcomes] == ["done", "done"], [str(o.error) for o in outcomes]
    mask = segment_array(session_node, segmentId, volume)
    assert mask[k, j, i] == 1 and mask[kk, jj, ii] == 1
    assert session_node.GetSegmentation().GetNumberOfSegments() == 1
    logic.runner.close()


def test_a_background_job_is_not_busy_and_yields_to_the_next_job_submitted(slicer_env):
    """Work ahead (the next candidate) leaves the panel idle; a user's run submitted meanwhile cancels it, starts
    next and is applied; the background result is never written; a background job never replaces a queued one."""
    from ProMISeSlicer.worker import CANCELLED, DONE, Job

    logic, engines = slow_logic()
    volume, points = scene_with_point()
    ahead = Job(lambda: logic.prepareRun(volume, points), logic.computeRun, lambda prepared: None, background=True)
    assert logic.runner.submit(ahead) == "started"
    engine = wait_until_held(logic, engines)
    assert not logic.busy, "work ahead must not look busy to the user"
    finished = []
    assert logic.runner.submit(job(logic, volume, points, finished=finished.append)) == "started"
    assert logic.runner.submit(Job(ahead.prepare, ahead.compute, ahead.apply, background=True)) == "dropped"
    assert logic.runner.waitForResult(WAIT_S), "the held ahead run did not see the cancel"
    outcomes = logic.runner.poll()  # drops the ahead result and starts the user's run
    assert [o.status for o in outcomes] == [CANCELLED] and logic.busy
    engine = wait_until_held(logic, engines)
    engine.release.set()
    outcomes += logic.runner.runUntilIdle(WAIT_S)
    assert [o.status for o in outcomes] == [CANCELLED, DONE]
    assert [o.job for o in finished] == [outcomes[1].job]
    node = logic.findSegmentationFor(volume)
    assert node is not None and node.GetSegmentation().GetNumberOfSegments() == 1
    logic.runner.close()
