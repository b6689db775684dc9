"""Opening an MLflow store: every command (a study, promote, a calibration) opens it through `tracking.client`."""
import fcntl

from search import tracking


def test_a_sqlite_store_is_opened_under_its_file_lock(tmp_path, monkeypatch):
    """Opening a new SQLite store creates its tables; two commands doing it at once would race."""
    db = tmp_path / "m.db"
    held = []

    def opened(tracking_uri: str) -> str:
        with open(f"{db}.lock", "a") as other:  # another open file: flock refuses it while the lock is held
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return tracking_uri

    monkeypatch.setattr(tracking, "MlflowClient", opened)
    assert tracking.client(f"sqlite:///{db}") == f"sqlite:///{db}" and held == [True]
    assert tracking.client("http://127.0.0.1:9") == "http://127.0.0.1:9" and held == [True, False]  # a server: no lock
