"""The dashboard's visual design in headless Chromium against a real farm (api,
scheduler and a worker with a tiny SD model, on Postgres, Redis and S3): each
page of the design part (sign-in, status, create, workers, usage, admin,
sessions, an error page) at 1366 px and 390 px, light and dark (and 1920 px), with
screenshots in test-artifacts/screenshots/. Every page must fit its window
(no horizontal scrolling), its buttons must be the stylesheet's, not the
browser's, and dark mode must render dark. Create must clear stale errors on a
check, show the result beside the buttons, and offer only SD frames."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from farm.spec import FAMILY_ASPECT_RATIOS
from tests.e2e.conftest import running_cluster
from tests.e2e.test_dashboard_browser import browser  # noqa: F401  (the headless Chromium fixture)

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 120_000
WIDTHS = {"desktop": (1366, 800), "phone": (390, 844), "wide": (1920, 1080)}
SCHEMES = {"desktop": ("light", "dark"), "phone": ("light", "dark"), "wide": ("light",)}
PAGES = ("/", "/create", "/workers", "/usage", "/admin", "/admin/sessions")

FITS = "document.documentElement.scrollWidth <= window.innerWidth"
# Chromium's own button: square corners, a grey face, normal weight.
BUTTON_LOOK = """(selector) => { const s = getComputedStyle(document.querySelector(selector));
  return {radius: s.borderRadius, weight: s.fontWeight, background: s.backgroundColor, padding: s.paddingLeft}; }"""
BODY_BACKGROUND = "getComputedStyle(document.body).backgroundColor"
FOCUS_RING = "(() => { const s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth]; })()"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3, tiny_models):
    """One farm for the module: the tests only read pages and submit tiny jobs."""
    redis_url = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    with running_cluster(tmp_path_factory.mktemp("design"), s3, redis_url, {"tiny-a": tiny_models["tiny-a"]},
                         {"wa": ["tiny-a"]}) as started:
        yield started


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"design-{name}.png"), full_page=True)


def open_page(browser, base: str, size: str, scheme: str = "light"):
    width, height = WIDTHS[size]
    page = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(base + "/login")
    return page


def sign_in(page, base: str, token: str) -> None:
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def name_of(path: str) -> str:
    return path.strip("/").replace("/", "-") or "status"


def assert_designed(page, what: str) -> None:
    """The page fits its window and its buttons are styled by farm.css."""
    assert page.evaluate(FITS), f"{what} scrolls sideways: {page.evaluate('document.documentElement.scrollWidth')} px wide"
    if page.locator("main button").count():
        look = page.evaluate(BUTTON_LOOK, "main button")
        assert look["radius"] != "0px" and int(look["weight"]) >= 600, f"{what}: a browser-default button {look}"


def luminance(css_colour: str) -> float:
    red, green, blue = (int(part) for part in css_colour[css_colour.index("(") + 1:css_colour.index(")")].split(",")[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def test_design_pages_fit_390_1366_and_1920_px_in_light_and_dark(cluster, browser, client_for):
    base = cluster.api_url
    client = client_for(cluster, cluster.token)
    # A finished job, so counts, usage and "last used" have something to show.
    client.wait_final(client.submit(prompt="a lighthouse at dawn", model="tiny-a", width=64, height=64, steps=2))
    for size in WIDTHS:
        for scheme in SCHEMES[size]:
            page = open_page(browser, base, size, scheme)
            suffix = f"{size}" + ("-dark" if scheme == "dark" else "")
            assert_designed(page, f"sign-in at {size}")
            page.keyboard.press("Tab")  # keyboard focus is visible: the stylesheet's ring, not none
            assert page.evaluate(FOCUS_RING) == ["solid", "3px"], page.evaluate(FOCUS_RING)
            shot(page, f"login-{suffix}")
            sign_in(page, base, cluster.admin_token)
            background = luminance(page.evaluate(BODY_BACKGROUND))
            assert (background < 0.2) if scheme == "dark" else (background > 0.9), (scheme, background)
            for path in PAGES:
                page.goto(base + path)
                assert_designed(page, f"{path} at {size} ({scheme})")
                shot(page, f"{name_of(path)}-{suffix}")
            page.goto(f"{base}/campaigns/{uuid.uuid4()}")  # a missing campaign: the error page
            assert_designed(page, f"error page at {size} ({scheme})")
            shot(page, f"error-{suffix}")
            page.context.close()


def test_status_counts_link_to_the_jobs_history(cluster, browser, client_for):
    base = cluster.api_url
    client = client_for(cluster, cluster.token)
    client.wait_final(client.submit(prompt="a fox in snow", model="tiny-a", width=64, height=64, steps=2))
    page = open_page(browser, base, "desktop")
    sign_in(page, base, cluster.token)
    assert int(page.inner_text("#count-succeeded").split()[1]) >= 1
    assert page.get_attribute("#count-failed", "href") == "/jobs?status=failed"
    page.click("#count-succeeded")
    page.wait_for_url(base + "/jobs?status=succeeded")
    assert page.locator("a[aria-current=page]").inner_text() == "Jobs"  # the nav marks the page


def test_create_clears_stale_errors_on_check_and_offers_only_registered_frames(cluster, browser):
    base = cluster.api_url
    page = open_page(browser, base, "desktop")
    sign_in(page, base, cluster.token)
    page.goto(base + "/create")
    # Only an SD model is registered: no SDXL frame is offered.
    offered = page.eval_on_selector_all("#aspect_ratio option", "options => options.map(o => o.value)")
    assert offered == list(FAMILY_ASPECT_RATIOS["sd"]) and "1024*1024" not in offered

    page.fill("#prompt", "a lighthouse")
    page.select_option("#model", "tiny-a")
    page.click("summary")  # advanced options
    page.fill("#width", "128")
    page.fill("#height", "128")
    page.fill("#steps", "0")
    page.click("#submit-button")  # refused: the page comes back with field errors
    assert "greater than or equal to 1" in page.inner_text("#error-steps")
    assert page.locator("#form-message").count() == 1

    if not page.is_visible("#steps"):  # the advanced options reopen when one of them has an error
        page.click("summary")
    page.fill("#steps", "4")
    page.click("#check-button")
    page.wait_for_selector("#check-result")
    assert page.locator("#error-steps").count() == 0 and page.locator("#form-message").count() == 0
    assert page.locator(".field-error").count() == 0
    # The result is beside the buttons and in view without scrolling.
    result, button = page.locator("#check-result").bounding_box(), page.locator("#check-button").bounding_box()
    assert result["y"] + result["height"] <= WIDTHS["desktop"][1] and abs(result["y"] - button["y"]) < 120
    assert_designed(page, "create after a check")
    page.screenshot(path=str(SCREENSHOTS / "design-create-checked-desktop.png"))


# Where a table's column lies against its scroll box and the window, for the layout checks below.
COLUMN_PLACE = """(selector) => { const cell = document.querySelector(selector), wrap = cell.closest('.table-wrap');
  const box = cell.getBoundingClientRect(), frame = wrap.getBoundingClientRect();
  return {shown: box.width > 0, right: box.right, frame_right: frame.right, window: window.innerWidth,
          scrolls: wrap.scrollWidth > wrap.clientWidth}; }"""
FILTER_TOPS = "[...document.querySelectorAll('#job-filters .filters > div')].map(d => Math.round(d.getBoundingClientRect().top))"


def test_campaign_list_fits_a_phone_and_the_jobs_filters_fit_one_row(cluster, browser):
    import requests

    base = cluster.api_url
    body = {"name": "a phone-width campaign list", "base": {"prompt": "a red boat", "model": "tiny-a", "width": 64,
                                                            "height": 64, "steps": 2}, "matrix": {"seed": [1, 2]}}
    answer = requests.post(f"{base}/api/v1/campaigns", json=body, headers={"Authorization": f"Bearer {cluster.token}"},
                           timeout=30)
    assert answer.status_code == 201, answer.text
    for size in ("phone", "desktop"):
        page = open_page(browser, base, size)
        sign_in(page, base, cluster.token)
        page.goto(base + "/campaigns")
        # The ETA column is in view without scrolling the table sideways; on a phone the owner, the
        # per-status counts and images/min drop out to make room.
        for selector in ("#eta-head", "#campaign-table td.eta"):
            place = page.evaluate(COLUMN_PLACE, selector)
            assert place["shown"] and not place["scrolls"], (size, selector, place)
            assert place["right"] <= min(place["frame_right"], place["window"]) + 0.5, (size, selector, place)
        owner_shown = page.evaluate("document.querySelector('#campaign-table th.opt').getBoundingClientRect().width > 0")
        assert owner_shown == (size == "desktop")
        assert_designed(page, f"campaigns at {size}")
        shot(page, f"campaigns-{size}")
        # The jobs history's filters: one row at 1,366 px (the "To" date wrapped onto its own), wrapped on a phone.
        page.goto(base + "/jobs")
        tops = page.evaluate(FILTER_TOPS)
        assert len(tops) == 6 and (len(set(tops)) == 1) == (size == "desktop"), (size, tops)
        # Its table too: the model column drops out on a phone, the time of each job stays in view.
        place = page.evaluate(COLUMN_PLACE, "#created-head")
        assert place["shown"] and not place["scrolls"] and place["right"] <= place["window"], (size, place)
        assert_designed(page, f"jobs at {size}")
        shot(page, f"jobs-{size}")
        page.context.close()
