"""The JSON document both benchmark servers return (one definition, so they cannot drift)."""

PAYLOAD = {"message": "hello, world", "count": 3, "ok": True}
