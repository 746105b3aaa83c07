"""explorer.html, clicked through in Debian's Chromium (chromium-driver + selenium)."""
import shutil
import time
import urllib.parse

import pandas as pd
import pytest

from conftest import PHOTOS, require, write_catalog
from helpers import embed, evaluate, explorer, neighbors, runfolder

# product ids as a scraped catalog may have them: HTML, quotes, maths
HOSTILE = ["<img src=x onerror=alert(1)>", "\"q'uote & co", "SKU $5-$10", "P$\\bar$"]


@pytest.fixture(scope="module")
def hostile_explorer(tiny_catalog, tmp_path_factory):
    """The tiny catalog (4 photos and their copies) under hostile product ids, run to 03."""
    tmp = tmp_path_factory.mktemp("explorer")
    ids = {name: HOSTILE[i] for i, name in enumerate(PHOTOS)}
    records = [{"imageName": f"{n}{s}", "productId": ids[n] + suffix}
               for n in PHOTOS for s, suffix in ((".jpg", ""), ("_copy.png", " (copy)"))]
    catalog = write_catalog(tmp / "image_data.json", records)
    run_dir = tmp / "run"
    embed.embed_folder(tiny_catalog, run_dir, catalog=catalog, progress=False)
    neighbors.write_neighbors(run_dir, k=7, duplicate_threshold=0.5)  # every other product listed
    return explorer.write_explorer(run_dir)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require("chromium")
    require("chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}", "--window-size=1200,1100"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait(predicate, seconds=10):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def product_id(index, driver):
    return driver.execute_script(f"return JSON.parse(document.getElementById('data').textContent).products[{index}].id")


def shown_id(driver):
    return driver.find_element("id", "product-id").text


def test_search_click_through_neighbours_and_back(hostile_explorer, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(hostile_explorer.as_uri())
    box = browser.find_element("id", "search")
    box.send_keys("sku")  # prefix, any case
    assert wait(lambda: browser.find_elements("css selector", "#results li"))
    assert [li.text for li in browser.find_elements("css selector", "#results li")] == \
        ["SKU $5-$10", "SKU $5-$10 (copy)"]
    box.send_keys(Keys.ENTER)
    assert wait(lambda: shown_id(browser) == "SKU $5-$10")
    assert urllib.parse.unquote(browser.execute_script("return location.hash")) == "#SKU $5-$10"
    first = browser.find_element("css selector", "#neighbors .card")
    target = first.find_element("css selector", ".id").text
    assert target == "SKU $5-$10 (copy)"  # its own copy is its nearest neighbour
    first.click()
    assert wait(lambda: shown_id(browser) == target)
    browser.back()
    assert wait(lambda: shown_id(browser) == "SKU $5-$10")
    browser.forward()
    assert wait(lambda: shown_id(browser) == target)


def test_a_shared_address_opens_its_product_and_names_stay_text(hostile_explorer, browser):
    name = HOSTILE[0]
    browser.get(hostile_explorer.as_uri() + "#" + urllib.parse.quote(name))
    assert wait(lambda: shown_id(browser) == name)  # the tag is shown, as text
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    texts = [c.text for c in browser.find_elements("css selector", "#neighbors .id")]
    assert "\"q'uote & co" in texts and "P$\\bar$" in texts  # quotes and $ as written
    browser.save_screenshot(str(hostile_explorer.with_name("explorer_product.png")))


def test_the_maps_click_opens_the_product_under_it(hostile_explorer, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    browser.get(hostile_explorer.as_uri())
    browser.find_element("id", "tab-map").click()
    canvas = browser.find_element("id", "map-canvas")
    index = 2
    x, y = browser.execute_script(f"return window.explorer.screenOf({index})")
    # the products drawn there (a photo's copy may lie within a pixel of it)
    expected = browser.execute_script(f"""
        const P = JSON.parse(document.getElementById('data').textContent).products;
        return P.filter((p, i) => Math.hypot(window.explorer.screenOf(i)[0] - {x}, window.explorer.screenOf(i)[1] - {y}) < 3)
                .map((p) => p.id);""")
    assert product_id(index, browser) in expected
    size = canvas.size  # the canvas is drawn at its own pixel size: offsets from its centre
    ActionChains(browser).move_to_element_with_offset(canvas, x - size["width"] / 2, y - size["height"] / 2) \
        .click().perform()
    assert wait(lambda: shown_id(browser) in expected), (expected, shown_id(browser))
    browser.find_element("id", "tab-map").click()
    browser.save_screenshot(str(hostile_explorer.with_name("explorer_map.png")))


def test_review_marks_download_as_a_labels_csv_that_05_reads(hostile_explorer, browser):
    browser.get(hostile_explorer.as_uri())
    browser.find_element("id", "tab-review").click()
    progress = browser.find_element("id", "review-progress")
    assert progress.text.startswith("pair 1 of ")
    browser.find_element("id", "same").click()
    browser.find_element("id", "different").click()
    browser.find_element("id", "download").click()
    csv = browser.downloads / "review_labels.csv"
    assert wait(lambda: csv.exists() and csv.stat().st_size > 0)
    marks = pd.read_csv(csv)
    assert list(marks.columns) == ["path", "label"] and len(marks) >= 3
    pairs = pd.read_csv(hostile_explorer.parent / runfolder.NEAR_DUPLICATES)
    first = marks.set_index("path")["label"]
    assert first[pairs["path_a"][0]] == first[pairs["path_b"][0]]  # "same": one label
    result = evaluate.run_labels(hostile_explorer.parent, csv, k=3)  # a person's review becomes a measurement
    assert int(result["summary"].loc["all", "queries"]) == len(marks)
    browser.save_screenshot(str(hostile_explorer.with_name("explorer_review.png")))


def test_a_sweeps_page_shows_each_configurations_neighbours_side_by_side(hostile_explorer, browser, tmp_path):
    first = tmp_path / "k=7"
    shutil.copytree(hostile_explorer.parent, first)
    second = tmp_path / "k=2"
    shutil.copytree(first, second)
    neighbors.write_neighbors(second, k=2)
    page = explorer.write_sweep_explorer(tmp_path, [first, second])
    browser.get(page.as_uri() + "#" + urllib.parse.quote(HOSTILE[2]))
    assert wait(lambda: shown_id(browser) == HOSTILE[2])
    headings = [h.text for h in browser.find_elements("css selector", "#configs h3")]
    assert headings == ["Neighbours in k=7", "Neighbours in k=2"]
    rows = browser.find_elements("css selector", "#configs .config")
    assert [len(r.find_elements("css selector", ".card")) for r in rows] == [7, 2]
    browser.save_screenshot(str(tmp_path / "explorer_sweep.png"))
