"""``python -m features.analytics data=<name>``: behaviour analytics of a prepared dataset.

Settings: ``conf/analytics.yaml`` (e.g. ``analytics.path_length=3``, ``analytics.top_categories=20``,
``analytics.live.log_dir=/path``). The service's own log: ``python -m features.prepare data=serve_events``
then ``python -m features.analytics data=serve_events`` (adds the live recommendation funnel).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from features.processed import ProcessedDataError


def main() -> None:
    import hydra

    from features.prepare import check_data_name

    check_data_name(sys.argv[1:], Path(__file__).resolve().parents[2] / "conf")

    @hydra.main(config_path="../../conf", config_name="analytics", version_base=None)
    def _main(cfg: Any) -> None:
        from features.analytics.job import run

        try:
            res = run(cfg)
        except (ValueError, FileNotFoundError, ProcessedDataError) as e:
            print(f"features.analytics: error: {e}", file=sys.stderr)
            sys.exit(2)
        s = res.summary
        fu = s["funnel_users"]
        print(f"analytics of {s['data']}: {s['n_events']:,} events reconciled; users view→cart "
              f"{fu['view_to_cart']}, cart→purchase {fu['cart_to_purchase']}; cart abandonment (pairs) "
              f"{s['cart_abandonment']['abandonment_rate_pairs']}; repeat-purchase rate "
              f"{s['repeat_purchase']['repeat_purchase_rate']}; {res.seconds:.1f}s -> {res.out_dir / 'report.html'}")

    _main()


if __name__ == "__main__":
    main()
