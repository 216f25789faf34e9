"""The one way tests wait: for a condition, with a deadline, and a failure that says what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["wait_for", "settled", "wait_for_http", "save_screenshot_when_still"]

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "the condition", every: float = 0.1) -> T:
    """``predicate()``'s first truthy value within ``timeout`` seconds; AssertionError naming
    ``what`` (and the last value) when it does not come."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(every)
        value = predicate()
    return value


def settled(measure: Callable[[], T], timeout: float = 10.0, reads: int = 3, every: float = 0.2) -> T:
    """``measure()`` once it gave the same value ``reads`` times in a row (threads, open files
    after a burst); AssertionError if it keeps changing for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last, same = measure(), 1
    while same < reads:
        if time.monotonic() > deadline:
            raise AssertionError(f"still changing after {timeout:g} s (last: {last!r})")
        time.sleep(every)
        value = measure()
        same = same + 1 if value == last else 1
        last = value
    return last


def wait_for_http(url: str, timeout: float = 60.0, what: str = "the server", alive: Callable[[], bool] | None = None,
                  verify: object = True) -> None:
    """Until ``url`` answers HTTP at all (any status); AssertionError naming ``what`` when it
    does not within ``timeout``, or at once when ``alive()`` says its process ended."""
    import requests

    def answers() -> bool:
        if alive is not None:
            assert alive(), f"{what} ended before it answered at {url}"
        try:
            requests.get(url, timeout=2, verify=verify)
            return True
        except requests.ConnectionError:
            return False

    wait_for(answers, timeout, f"{what} to answer at {url}", every=0.2)


def save_screenshot_when_still(browser: Any, path: object, timeout: float = 15.0) -> None:
    """Save ``browser``'s screenshot at ``path`` once two screenshots in a row are the same:
    the page has finished drawing (fonts, images, a viewer's render), instead of a fixed sleep.
    A page that keeps moving (a spinner) is saved as it is after ``timeout``, and said: the
    screenshot is for a person to look at, what the page must show is asserted by the test."""
    import hashlib

    shoot = browser.get_screenshot_as_png
    try:
        settled(lambda: hashlib.sha256(shoot()).hexdigest(), timeout, reads=2, every=0.3)
    except AssertionError:
        print(f"{path}: the page was still changing after {timeout:g} s; saved as it was")
    browser.save_screenshot(str(path))
