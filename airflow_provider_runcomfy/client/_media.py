"""What an output file is, from its answer's ``Content-Type`` and its URL, and how a URL is shown.

Shared by the downloads (``download``) and whatever names a copy or prints a URL.
"""

from __future__ import annotations

import mimetypes
from urllib.parse import urlsplit

from airflow_provider_runcomfy.client.errors import OutputContentTypeError

#: Media types the provider names the copy after; others fall back to ``mimetypes``.
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/tiff": "tiff",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
}

#: Media types that say nothing about the content: tolerated when the URL's extension does.
_UNTYPED = ("", "application/octet-stream", "binary/octet-stream")


def shown_url(url: str) -> str:
    """``url`` without its query and credentials, for messages: signed URLs are long and not for logs."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else str(url)[:200]


def media_type(url: str, content_type: str | None) -> tuple[str, str]:
    """``(media type, extension)`` of an answer, or ``OutputContentTypeError`` if it is not a picture or video.

    ``application/octet-stream`` (or no type at all), which some storage services send for
    everything, is accepted when the URL's file extension names an image or video type.
    """
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared.startswith(("image/", "video/")):
        return declared, _extension(declared) or _url_extension(url) or "bin"
    if declared in _UNTYPED:
        guessed, _ = mimetypes.guess_type(urlsplit(url).path)
        if guessed and guessed.startswith(("image/", "video/")):
            return guessed, _extension(guessed) or _url_extension(url) or "bin"
    raise OutputContentTypeError(
        f"The output {shown_url(url)} is not an image or a video (Content-Type "
        f"{declared or 'missing'!r}{' and no image or video file extension' if declared in _UNTYPED else ''}); "
        "it was not kept. If the URL has expired, the host may be answering with an error page."
    )


def _extension(media: str) -> str | None:
    if media in _EXTENSIONS:
        return _EXTENSIONS[media]
    guessed = mimetypes.guess_extension(media)
    return guessed.lstrip(".") if guessed else None


def _url_extension(url: str) -> str | None:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext.isalnum() and 0 < len(ext) <= 8 else None
