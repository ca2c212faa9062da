"""Hand-written records with known answers, for the report's tests."""

import json

from nerepro import RunConfig


def record(network, alpha, batch_size, seed, test_acc=90.0, steps=1000, status="converged", wall_s=10.0, **settings):
    cfg = RunConfig(network, float(alpha), batch_size, seed=seed, **settings)
    converged = status == "converged"
    return {
        "run_id": cfg.run_id, "network": network, "dataset": cfg.dataset, "alpha": float(alpha),
        "batch_size": batch_size, "seed": seed, "status": status, "test_acc": test_acc,
        "convergence_steps": steps if converged else None, "steps": steps,
        "samples_processed": steps * cfg.samples_per_step(60000), "wall_s": wall_s,
        "config": cfg.record_config(), "provenance": {"device": "test"}, "curve": {},
    }


def write(results_dir, records):
    runs = results_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for r in records:
        (runs / f"{r['run_id']}.json").write_text(json.dumps(r))
    return results_dir
