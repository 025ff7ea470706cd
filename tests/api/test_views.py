"""The app list's JSON, written from plain dicts, is exactly what `list[AppOut]` gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import TypeAdapter

from shanzhi.api import schemas, views
from shanzhi.services.apps import AppRow


def test_the_list_json_is_the_schemas_json_and_its_statuses_follow_the_instances() -> None:
    t = datetime(2026, 12, 6, 23, 24, 0, 123456, tzinfo=UTC)
    rows = [
        AppRow(1, "ready", "gz", 3, False, (("web", 2), ("db", 1)), t, t + timedelta(seconds=1),
               (("web", "running"), ("web", "running"), ("db", "running"), ("web", "terminating"))),
        AppRow(2, "waiting", "gz/a", 1, False, (("web", 2),), t, t, (("web", "pending"), ("web", "running"))),
        AppRow(3, "rolling", "gz/a", 2, False, (("web", 1),), t, t, (("web", "starting"), ("web", "lost"))),
        AppRow(4, "going", "sz", 5, True, (("web", 1),), t, t, ()),
        AppRow(5, "empty", "sz", 1, False, (), t, t, ()),
    ]  # fmt: skip
    body = views.apps_json(rows)
    models = [schemas.AppOut.model_validate(x) for x in TypeAdapter(list[dict]).validate_json(body)]  # type: ignore[type-arg]
    assert body == TypeAdapter(list[schemas.AppOut]).dump_json(models)
    assert [m.status for m in models] == ["Ready", "Unschedulable", "Progressing", "Deleting", "Ready"]
    web = models[0].components[0]
    assert (web.name, web.desired, web.ready, web.instances) == ("web", 2, 2, 2)  # terminating not counted
    assert (models[2].components[0].ready, models[2].components[0].instances) == (0, 1)  # lost not counted
    assert models[0].updated_at == t + timedelta(seconds=1)
