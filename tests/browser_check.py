"""Open an HTML file in headless Chromium and report what rendered (run as a subprocess, possibly
inside a network namespace with no network): circuitsvis mounts and their text, images, console
errors; save a screenshot. Prints one JSON object."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1280,2400",
]


def main(page: str, screenshot: str) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={Path(screenshot).parent / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(Path(page).resolve().as_uri())
        time.sleep(2)
        mounts = driver.execute_script(
            "return Array.from(document.querySelectorAll('[id^=circuits-vis-]'))"
            ".map(e => ({children: e.querySelectorAll('*').length, text: e.innerText}))"
        )
        images = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
        )
        selects = driver.execute_script("return document.querySelectorAll('select').length")
        logs = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height) + 100, 16000))  # the whole page
        time.sleep(0.5)
        driver.save_screenshot(screenshot)
    finally:
        driver.quit()
    print(json.dumps({"mounts": mounts, "images": images, "selects": selects, "errors": logs}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
