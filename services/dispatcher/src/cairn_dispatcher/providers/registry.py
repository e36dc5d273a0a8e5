"""Build and keep one provider per Channel/Destination document (pools live as long as it)."""

from __future__ import annotations

from cairn_dispatcher.documents import Target
from cairn_dispatcher.providers.base import Provider
from cairn_dispatcher.providers.destinations import Braze, CustomerIo, Iterable
from cairn_dispatcher.providers.email import EmailTracking, Smtp
from cairn_dispatcher.providers.functions import DestinationFunction
from cairn_dispatcher.providers.http import HttpProvider, Twilio, Webhook
from cairn_dispatcher.providers.push import Fcm, WebPush
from cairn_dispatcher.settings import Settings

_HTTP: dict[str, type[HttpProvider]] = {
    "webhook": Webhook,
    "twilio": Twilio,
    "fcm": Fcm,
    "webpush": WebPush,
    "braze": Braze,
    "customerio": CustomerIo,
    "iterable": Iterable,
}


class Providers:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tracking = EmailTracking(settings.tracking_base_url, settings.tracking_secret)
        self._built: dict[str, tuple[Target, Provider]] = {}

    async def get(self, target: Target) -> Provider:
        """The provider for this document; rebuilt when the document changed."""
        found = self._built.get(target.key)
        if found is not None and found[0] == target:
            return found[1]
        provider = self._build(target)
        self._built[target.key] = (target, provider)
        if found is not None:
            await found[1].close()
        return provider

    def _build(self, target: Target) -> Provider:
        s = self._settings
        if target.type == "smtp":
            return Smtp(
                target,
                tracking=self._tracking,
                pool_size=s.smtp_pool_size,
                timeout=s.provider_timeout_seconds,
            )
        if target.type == "function":
            return DestinationFunction(
                target,
                timeout=s.function_timeout_seconds,
                memory_mb=s.function_memory_mb,
                http_timeout=s.provider_timeout_seconds,
            )
        return _HTTP[target.type](
            target, timeout=s.provider_timeout_seconds, concurrency=s.provider_concurrency
        )

    async def close(self) -> None:
        for _, provider in self._built.values():
            await provider.close()
        self._built.clear()
