import reec_otel


def test_a_job_leaves_three_rows(configured, backend):
    reec_otel.Worker("fixture", run_function=lambda ctx: "ok").execute()
    assert configured.force_flush(10_000)
    assert [r["state_job"] for r in backend.rows()] == ["Enqueued", "Processing", "Succeeded"]
