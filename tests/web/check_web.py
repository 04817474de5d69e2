"""The qstore pages in a real browser: Debian's chromium, headless, driven through chromedriver.

Usage: python check_web.py EXPECTED.json   (written by tests/it/web.rs)

Checks, in order: the list page and its search; the model page, whose sizes must equal the API's;
a hostile README and commit title that must stay inert (asserted from the browser: no script ran,
no dialog opened) and show as text; switching to the INT8 view; copying a snippet (read back
from the clipboard); an upload through the form with a token, the new model opened, then
deleted with the confirmation accepted. Screenshots of the list and model pages at phone and
desktop widths go to the directory EXPECTED.json names. Exits non-zero on the first failure.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait


def check(cond, message):
    if not cond:
        print(f"FAILED: {message}", flush=True)
        sys.exit(1)


def main():
    x = json.loads(Path(sys.argv[1]).read_text())
    server, repo = x["server"], x["repo"]
    shots = Path(x["screenshots"])
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1280,900"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=x["chromedriver"]), options=options)
    wait = WebDriverWait(driver, 30)
    try:
        driver.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": server, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})

        def no_script_ran(where):
            check(driver.execute_script("return window.pwned") is None, f"{where}: a script ran")
            try:
                text = driver.switch_to.alert.text
                check(False, f"{where}: a dialog opened: {text}")
            except NoAlertPresentException:
                pass

        # The list, and its search (other tests sharing the catalog may fill the first page).
        driver.get(server + "/")
        driver.save_screenshot(str(shots / "list-desktop.png"))
        box = driver.find_element(By.NAME, "q")
        box.send_keys(repo.split("/")[0])
        box.submit()
        wait.until(ec.url_contains("q="))
        names = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "li.model a.name")]
        check(names == [repo], f"search found {names}")
        driver.find_element(By.LINK_TEXT, repo).click()

        # The model page: sizes as the API says, hostile text inert.
        wait.until(ec.presence_of_element_located((By.ID, "model-name")))
        check(driver.find_element(By.ID, "model-name").text == repo, "model page heading")
        for element, key in [("blob-bytes", "blob"), ("high-bytes", "high"), ("int8-bytes", "int8")]:
            shown = driver.find_element(By.ID, element).get_attribute("data-bytes")
            check(int(shown) == x["sizes"][key], f"{key}: page {shown}, API {x['sizes'][key]}")
        rows = {r.find_element(By.CSS_SELECTOR, "td.path").text: r
                for r in driver.find_elements(By.CSS_SELECTOR, "table.files tbody tr")}
        cells = rows["model.safetensors"].find_elements(By.CSS_SELECTOR, "td")
        check(int(cells[1].get_attribute("data-bytes")) == x["sizes"]["high"], "file table: high size")
        check(int(cells[2].get_attribute("data-bytes")) == x["sizes"]["int8"], "file table: INT8 size")
        titles = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "ol.history .title")]
        check(x["title"] in titles, f"the commit title shows as text: {titles}")
        no_script_ran("model page")
        for link in driver.find_elements(By.CSS_SELECTOR, "article.card a"):
            check(not (link.get_attribute("href") or "").lower().startswith("javascript"), "javascript: link")
            link.click()
            time.sleep(0.2)
            no_script_ran("after clicking a card link")
            if driver.current_url.rstrip("/") != f"{server}/{repo}":
                driver.back()
        driver.save_screenshot(str(shots / "model-desktop.png"))

        # Copy a snippet, then read the clipboard back.
        button = driver.find_element(By.CSS_SELECTOR, "button[data-copy]")
        snippet = driver.find_element(By.ID, button.get_attribute("data-copy")).text
        button.click()
        wait.until(lambda d: button.text == "Copied")
        pasted = driver.execute_async_script(
            "navigator.clipboard.readText().then(arguments[0], () => arguments[0](null));")
        check(pasted == snippet, f"clipboard {pasted!r}, snippet {snippet!r}")
        check(server in snippet and repo in snippet, f"snippet names host and repo: {snippet}")

        # The INT8 view.
        driver.find_element(By.ID, "switch-view").click()
        wait.until(ec.url_contains("rev=int8"))
        check("INT8" in driver.find_element(By.ID, "view").text, "INT8 view shown")

        # Phone width.
        driver.set_window_size(390, 844)
        driver.get(f"{server}/{repo}")
        driver.save_screenshot(str(shots / "model-phone.png"))
        width = driver.execute_script("return document.documentElement.scrollWidth")
        check(width <= 400, f"the model page scrolls sideways on a phone ({width} px)")
        driver.get(server + "/")
        driver.save_screenshot(str(shots / "list-phone.png"))
        driver.set_window_size(1280, 900)

        # Upload through the form, open it, delete it.
        up = x["upload"]
        driver.get(server + "/")
        driver.find_element(By.CSS_SELECTOR, "#manage summary").click()
        driver.find_element(By.ID, "upload-name").send_keys(up["name"])
        driver.find_element(By.ID, "upload-files").send_keys("\n".join(up["files"]))
        driver.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
        status = driver.find_element(By.ID, "upload-status")
        wait.until(lambda d: "refused" in status.text or "Uploaded" in status.text)
        check("refused" in status.text and "401" in status.text,
              f"without a token the upload is refused in words: {status.text!r}")
        driver.find_element(By.ID, "token").send_keys(x["token"])
        driver.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
        wait.until(ec.presence_of_element_located((By.ID, "uploaded-link"))).click()
        wait.until(ec.presence_of_element_located((By.ID, "model-name")))
        check(driver.find_element(By.ID, "model-name").text == up["name"], "the uploaded model opens")
        listed = f"{server}/?q={up['name'].split('/')[0]}"
        driver.get(listed)
        check(up["name"] in driver.page_source, "the uploaded model is listed")
        driver.get(f"{server}/{up['name']}")
        driver.find_element(By.CSS_SELECTOR, "#manage summary").click()
        driver.find_element(By.ID, "token").send_keys(x["token"])
        # The newest revision is main's head: deleting it alone is refused, in words.
        driver.find_element(By.CSS_SELECTOR, "button.delete-rev").click()
        wait.until(ec.alert_is_present())
        driver.switch_to.alert.accept()
        status = driver.find_element(By.ID, "upload-status")
        wait.until(lambda d: "refused" in status.text)
        check("main" in status.text and "409" in status.text, f"revision delete: {status.text!r}")
        driver.find_element(By.ID, "delete-model").click()
        wait.until(ec.alert_is_present())
        driver.switch_to.alert.accept()
        wait.until(lambda d: d.current_url.rstrip("/") == server)
        driver.get(listed)
        check(up["name"] not in driver.page_source, "the deleted model is gone from the list")
        driver.get(f"{server}/{up['name']}")
        check("Not found" in driver.page_source, "the deleted model's page is gone")
    finally:
        driver.quit()
    for name in ["list-desktop", "model-desktop", "list-phone", "model-phone"]:
        print(f"screenshot: {shots / (name + '.png')}")
    print("check_web: OK")


if __name__ == "__main__":
    main()
