"""Output files are real, public PNG pictures: the input edited, or a drawn stand-in when out of reach."""

from __future__ import annotations

import base64
import io

import httpx
import png
import pytest

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana/edit"


def run(api: httpx.Client, payload: dict, model_id: str = FLUX) -> dict:
    """Submit a job (the emulator runs instantly here) and return its result."""
    response = api.post(f"/v1/models/{model_id}", json=payload)
    assert response.status_code == 200, response.text
    return api.get(f"/v1/requests/{response.json()['request_id']}/result").json()


def fetch_png(url: str) -> bytes:
    """GET an output file the way a pipeline would: no token."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


def pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a PNG, decoded by pypng (which checks every chunk's CRC)."""
    width, height, rows, _ = png.Reader(file=io.BytesIO(data)).asRGB8()
    return width, height, b"".join(bytes(row) for row in rows)


def solid_png_data_uri(color: tuple[int, int, int], width: int = 40, height: int = 30) -> str:
    out = io.BytesIO()
    png.Writer(width, height, greyscale=False).write(out, [list(color) * width] * height)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_an_output_is_a_public_png_of_the_requested_aspect_ratio(emu, api):
    wide = run(api, {"prompt": "p", "image_url": emu.sample_url("street")})
    tall = run(api, {"prompt": "p", "image_url": emu.sample_url("street"), "aspect_ratio": "9:16"})

    assert pixels(fetch_png(wide["output"]["image"]))[:2] == (512, 288)  # flux's default 16:9
    assert pixels(fetch_png(tall["output"]["image"]))[:2] == (288, 512)
    assert emu.journal.last("file").headers.get("authorization") is None


def test_different_prompts_give_different_pictures_and_a_prompt_gives_the_same_one(emu, api):
    image_url = "https://example.com/cat.png"
    blue = fetch_png(run(api, {"prompt": "make it blue", "image_url": image_url})["output"]["image"])
    red = fetch_png(run(api, {"prompt": "make it red", "image_url": image_url})["output"]["image"])
    blue_again = fetch_png(run(api, {"prompt": "make it blue", "image_url": image_url})["output"]["image"])
    seeded = fetch_png(
        run(api, {"prompt": "make it blue", "image_url": image_url, "seed": 7})["output"]["image"]
    )

    assert pixels(blue)[2] != pixels(red)[2]
    assert blue == blue_again
    assert pixels(blue)[2] != pixels(seeded)[2]


@pytest.mark.parametrize(("color", "strongest"), [((255, 0, 0), 0), ((0, 160, 0), 1), ((0, 0, 255), 2)])
def test_a_data_uri_input_is_decoded_and_shows_in_the_output(emu, api, color, strongest):
    result = run(api, {"prompt": "tint", "image_url": solid_png_data_uri(color), "aspect_ratio": "1:1"})

    width, height, rgb = pixels(fetch_png(result["output"]["image"]))
    assert (width, height) == (512, 512)
    centre = (height // 2 * width + width // 2) * 3
    channels = list(rgb[centre : centre + 3])
    assert channels.index(max(channels)) == strongest, channels  # the input's colour, tinted


def test_a_sample_url_is_read_internally_like_the_same_bytes_in_a_data_uri(emu, api):
    sample = fetch_png(emu.sample_url("portrait"))
    as_data = "data:image/png;base64," + base64.b64encode(sample).decode()
    emu.journal.clear()

    via_url = run(api, {"prompt": "smile", "image_url": emu.sample_url("portrait")})
    via_data = run(api, {"prompt": "smile", "image_url": as_data})

    assert fetch_png(via_url["output"]["image"]) == fetch_png(via_data["output"]["image"])
    assert emu.journal.count("sample") == 0  # no HTTP request for its own URL


def test_a_loopback_http_input_is_fetched_over_http(emu, api):
    other_host = emu.sample_url("portrait").replace("127.0.0.1", "localhost")
    fetched = run(api, {"prompt": "smile", "image_url": other_host})
    internal = run(api, {"prompt": "smile", "image_url": emu.sample_url("portrait")})

    assert fetched["status"] == "succeeded"
    assert emu.journal.count("sample") == 1
    assert emu.journal.last("sample").headers["host"].startswith("localhost:")
    assert fetch_png(fetched["output"]["image"]) == fetch_png(internal["output"]["image"])


def test_a_loopback_input_that_is_missing_fails_the_job(emu, api):
    missing = emu.url("/samples/nothing-here.png").replace("127.0.0.1", "localhost")
    result = run(api, {"prompt": "p", "image_url": missing})

    assert result["status"] == "failed"
    assert result["error"]["message"] == f"could not fetch image_url {missing}: HTTP 404"


def test_an_input_on_an_invalid_host_fails_the_job(emu, api):
    url = "https://photos.invalid/cat.png"
    request_id = api.post(f"/v1/models/{FLUX}", json={"prompt": "p", "image_url": url}).json()["request_id"]

    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "completed"
    result = api.get(f"/v1/requests/{request_id}/result").json()
    assert result["status"] == "failed"
    assert result["error"]["message"] == f"could not fetch image_url {url}: host not found"
    assert httpx.get(f"{emu.base_url}/files/{request_id}/0.png").status_code == 404

    nano = run(api, {"prompt": "p", "image_urls": [emu.sample_url(), "https://x.invalid/b.png"]}, NANO)
    assert nano["error"]["message"].startswith("could not fetch image_urls[1] https://x.invalid/b.png")


def test_an_internet_url_gets_a_stand_in_that_depends_on_the_url(emu, api):
    first = fetch_png(
        run(api, {"prompt": "p", "image_url": "https://cdn.example.com/a.png"})["output"]["image"]
    )
    again = fetch_png(
        run(api, {"prompt": "p", "image_url": "https://cdn.example.com/a.png"})["output"]["image"]
    )
    other = fetch_png(
        run(api, {"prompt": "p", "image_url": "https://cdn.example.com/b.png"})["output"]["image"]
    )

    assert first == again
    assert pixels(first)[2] != pixels(other)[2]


def test_an_output_can_be_the_input_of_the_next_job(emu, api):
    edited = run(api, {"prompt": "first edit", "image_url": emu.sample_url("landscape")})
    chained = run(api, {"prompt": "second edit", "image_urls": [edited["output"]["image"]]}, NANO)

    assert chained["status"] == "succeeded"
    before, after = fetch_png(edited["output"]["image"]), fetch_png(chained["output"]["images"][0])
    assert pixels(after)[:2] == pixels(before)[:2]  # "auto" keeps the input's ratio
    assert pixels(after)[2] != pixels(before)[2]


def test_nano_banana_outputs_are_distinct_pictures(emu, api):
    result = run(
        api, {"prompt": "variations", "image_urls": [emu.sample_url("portrait")], "num_images": 3}, NANO
    )

    decoded = [pixels(fetch_png(url)) for url in result["output"]["images"]]
    assert all(
        (width, height) == (384, 512) for width, height, _ in decoded
    )  # the portrait's 3:4, long side 512
    assert len({rgb for _, _, rgb in decoded}) == 3


def test_a_file_of_an_unfinished_job_or_past_the_last_output_is_404(emu, api):
    done = run(api, {"prompt": "p", "image_url": emu.sample_url()})
    request_id = done["request_id"]
    emu.set_config(queue_seconds=30)
    queued = api.post(f"/v1/models/{FLUX}", json={"prompt": "p", "image_url": emu.sample_url()}).json()

    assert httpx.get(f"{emu.base_url}/files/{request_id}/1.png").status_code == 404
    assert httpx.get(f"{emu.base_url}/files/{queued['request_id']}/0.png").status_code == 404
    assert httpx.get(f"{emu.base_url}/files/{request_id}/0.png").status_code == 200


def test_samples_are_listed_and_served(emu):
    listing = httpx.get(f"{emu.base_url}/samples/").json()["samples"]

    assert {s["name"] for s in listing} >= {"portrait", "street", "product", "landscape"}
    for sample in listing:
        assert pixels(fetch_png(sample["url"]))[:2] == (sample["width"], sample["height"])
    assert httpx.get(f"{emu.base_url}/samples/unicorn.png").status_code == 404


def test_a_png_bomb_input_is_not_inflated_and_the_job_gets_a_stand_in(emu, api):
    import tracemalloc

    from airflow_provider_runcomfy.emulator import bombs
    from airflow_provider_runcomfy.emulator.images import UnreadablePNG, decode_fitted

    bomb = bombs.png_bomb(400_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(UnreadablePNG, match="inflates beyond the 12352 bytes a 64x64 PNG needs"):
            decode_fitted(bomb, None, 512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # pypng would have inflated the first 1 MB IDAT chunk to ~1 GB

    as_data = "data:image/png;base64," + base64.b64encode(bomb).decode()
    result = run(api, {"prompt": "p", "image_url": as_data, "aspect_ratio": "1:1"})
    assert result["status"] == "succeeded"
    assert pixels(fetch_png(result["output"]["image"]))[:2] == (512, 512)


@pytest.mark.parametrize(
    ("writer_options", "row"),
    [
        ({"greyscale": True}, [200] * 8),
        ({"greyscale": True, "alpha": True}, [200, 255] * 8),
        ({"greyscale": False, "alpha": True}, [200, 200, 200, 128] * 8),
        ({"greyscale": True, "bitdepth": 16}, [51400] * 8),
        ({"palette": [(200, 200, 200)], "bitdepth": 1}, [0] * 8),
    ],
)
def test_an_input_of_any_png_colour_type_and_depth_is_decoded(writer_options, row):
    from airflow_provider_runcomfy.emulator.images import decode_fitted

    out = io.BytesIO()
    png.Writer(8, 6, **writer_options).write(out, [row] * 6)

    fitted = decode_fitted(out.getvalue(), (1, 1), 4)
    assert (fitted.width, fitted.height) == (4, 4)
    assert set(fitted.data) == {200}  # grey 200 everywhere, alpha dropped


def test_the_samples_are_four_different_pictures_and_an_output_is_one_edited(emu, api):
    samples = {
        name: pixels(fetch_png(emu.sample_url(name)))
        for name in ("portrait", "street", "product", "landscape")
    }
    for _, _, rgb in samples.values():
        colours = {rgb[i : i + 3] for i in range(0, len(rgb), 3)}
        assert len(colours) > 20  # a picture, not a blank
    assert len({rgb for _, _, rgb in samples.values()}) == 4

    result = run(api, {"prompt": "edit", "image_url": emu.sample_url("product"), "aspect_ratio": "1:1"})
    width, height, edited = pixels(fetch_png(result["output"]["image"]))
    original = samples["product"][2]
    assert (width, height) == (512, 512)  # the product's own size: the same pixels, edited
    changed = sum(edited[i : i + 3] != original[i : i + 3] for i in range(0, len(original), 3))
    assert changed > 0.9 * width * height
