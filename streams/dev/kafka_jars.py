"""The Kafka versions the embedded broker runs, and their jars (from Maven Central).

Each version has a POM under ``compose/kafka/<version>/`` that ``mvn`` resolves, runtime scope,
into a cache shared by dev and tests, ``~/.cache/talkstream/kafka-<version>``. What differs
between the lines is only what the broker needs beside Kafka's own POM, and how it is told
where its logging configuration is:

- 4.x logs through log4j2, and its POM brings slf4j-api 1.7 without a binding: without
  ``log4j-slf4j-impl`` the broker logs nothing (not even why it died);
  ``-Dlog4j2.configurationFile``.
- 3.x logs through reload4j, which is compile-only in Kafka's own POM: ``slf4j-reload4j`` and
  ``reload4j`` are added; ``-Dlog4j.configuration``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from streams.errors import TalkstreamError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "compose" / "kafka"


class KafkaLauncherError(TalkstreamError):
    """The embedded broker could not be fetched, formatted, started or stopped."""


@dataclass(frozen=True)
class KafkaVersion:
    """What one Kafka line needs to run: its jars and how it is told where its logging is."""

    version: str
    # the broker does not start (or logs nothing) without these
    required_jars: tuple[str, ...]
    logging_config: str  # a file in compose/kafka/<version>/
    logging_property: str  # the JVM system property naming it

    @property
    def required(self) -> str:
        return ", ".join(self.required_jars)


VERSIONS: dict[str, KafkaVersion] = {
    # Kafka 4 logs through log4j2; its POM brings slf4j-api 1.7 without a binding
    "4.4.0": KafkaVersion(
        "4.4.0",
        ("kafka_2.13-4.4.0.jar", "log4j-slf4j-impl-*.jar", "log4j-core-*.jar"),
        "log4j2.properties",
        "log4j2.configurationFile",
    ),
    # reload4j is compile-only in Kafka 3's own POM, so the broker lacks it unless we add it
    "3.9.1": KafkaVersion(
        "3.9.1",
        ("kafka_2.13-3.9.1.jar", "slf4j-reload4j-*.jar", "reload4j-*.jar"),
        "log4j.properties",
        "log4j.configuration",
    ),
}
DEFAULT_KAFKA_VERSION = "4.4.0"


def kafka_version(version: str) -> KafkaVersion:
    try:
        return VERSIONS[version]
    except KeyError:
        known = ", ".join(VERSIONS)
        raise KafkaLauncherError(
            f"Kafka {version} is not supported here; use one of {known}"
        ) from None


def default_jars_dir(version: str = DEFAULT_KAFKA_VERSION) -> Path:
    """``~/.cache/talkstream/kafka-<version>``; ``TALKSTREAM_KAFKA_JARS`` replaces it for the
    selected version (``TALKSTREAM_KAFKA_VERSION``, default 4.4.0)."""
    selected = os.environ.get("TALKSTREAM_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)
    override = os.environ.get("TALKSTREAM_KAFKA_JARS")
    if override and version == selected:
        return Path(override).expanduser()
    return Path(f"~/.cache/talkstream/kafka-{version}").expanduser()


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaLauncherError(
            "no `java` on PATH and no $JAVA_HOME/bin/java: install a JDK 17 "
            "(Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
        )
    return java


def fetch_jars(kafka: KafkaVersion, jars_dir: Path, config_dir: Path = CONFIG_DIR) -> Path:
    """Resolve ``kafka``'s jars into ``jars_dir`` once (a no-op when they are there)."""
    if has_jars(jars_dir, kafka):
        return jars_dir
    pom = config_dir / kafka.version / "pom.xml"
    if not pom.is_file():
        raise KafkaLauncherError(
            f"{pom} is missing: run from a checkout of the project, or put the runtime jars "
            f"of org.apache.kafka:kafka_2.13:{kafka.version} ({kafka.required}) "
            f"in {jars_dir} (or point TALKSTREAM_KAFKA_JARS at them)"
        )
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLauncherError(
            f"no `mvn` on PATH to fetch the Kafka {kafka.version} jars into {jars_dir}: "
            "install Maven (Debian: apt-get install maven) or set TALKSTREAM_KAFKA_JARS"
        )
    find_java()  # Maven needs it too; say so before Maven does, less clearly
    jars_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{jars_dir.name}-", dir=jars_dir.parent))
    logger.info("fetching Kafka jars version=%s into=%s", kafka.version, jars_dir)
    try:
        command = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
        command += ["-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not has_jars(tmp, kafka):
            raise KafkaLauncherError(
                f"mvn could not fetch the Kafka {kafka.version} jars (exit {done.returncode});"
                " is Maven Central or a mirror (~/.m2/settings.xml) reachable?\n"
                + _tail(done.stdout + done.stderr)
            )
        tmp.chmod(0o755)  # mkdtemp makes it private; it is a shared cache
        try:
            tmp.rename(jars_dir)  # atomic: a half-done fetch is never in place
        except OSError as exc:
            if not has_jars(jars_dir, kafka):  # else a concurrent fetch won
                raise KafkaLauncherError(f"{jars_dir} lacks the jars: remove it") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return jars_dir


def has_jars(directory: Path, kafka: KafkaVersion) -> bool:
    return all(any(directory.glob(pattern)) for pattern in kafka.required_jars)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
