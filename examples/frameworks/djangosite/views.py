"""Views that call a node (and wait) or cast a task (and do not)."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

import vertebra

from .bus import get_bus


@require_GET
def report(request: HttpRequest, customer: str) -> JsonResponse:
    try:
        text = get_bus().proxy("reports", timeout=5.0).render(customer)
    except vertebra.Unreachable:
        return JsonResponse({"error": "the reports service is not running"}, status=503)
    except vertebra.CallTimeout:
        return JsonResponse({"error": "the reports service did not answer in time"}, status=504)
    except vertebra.RemoteError as exc:
        return JsonResponse({"error": f"{exc.type}: {exc.message}"}, status=502)
    return JsonResponse({"report": text})


@require_POST
def mail_report(request: HttpRequest, customer: str) -> JsonResponse:
    queued = get_bus().proxy("reports").mail.cast(customer)     # into the outbox; returns at once
    return JsonResponse({"queued": queued}, status=202)
