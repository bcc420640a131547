"""Packaging for minillm. Metadata, requirements, extras and console scripts come from settings.ini."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

for key in "lib_name version description author author_email license min_python git_url".split():
    if not cfg.get(key):
        raise SystemExit(f"settings.ini is missing `{key}`: add it under [DEFAULT].")

licenses = {"apache2": "Apache-2.0"}  # SPDX expressions
if cfg["license"] not in licenses: raise SystemExit(f"settings.ini: unknown license {cfg['license']!r}; known: {', '.join(licenses)}")
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = "3.10 3.11 3.12 3.13".split()
min_python = cfg["min_python"]

def reqs(key):
    return cfg.get(key, "").split()

readme = Path(__file__).parent / "README.md"

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=licenses[cfg["license"]],
    license_files=["LICENSE"],
    url=cfg["git_url"],
    keywords=cfg.get("keywords", "").split(),
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"]) - 1],
        "Intended Audience :: " + cfg["audience"].title(),
        "Natural Language :: " + cfg["language"].title(),
    ] + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    python_requires=">=" + min_python,
    install_requires=reqs("requirements"),
    extras_require={"dev": reqs("dev_requirements") + reqs("deepspeed_requirements")   # CI tests the DeepSpeed paths
                    + reqs("hf_requirements"),                                           # and the Hugging Face bridge
                    "deepspeed": reqs("deepspeed_requirements"), "flash": reqs("flash_requirements"),
                    "hf": reqs("hf_requirements"),
                    "docs": reqs("docs_requirements")},                 # make docs; not in dev (CI time)
    entry_points={
        "console_scripts": reqs("console_scripts"),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
