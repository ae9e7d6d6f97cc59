#!/usr/bin/env bash
# Fetches an Apache Kafka broker (KRaft) and its client library from Maven Central
# with Maven, and compiles the KafkaCheck client tool the tests run against it:
#   libs      ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark/kafka-<version>/libs
#             (every runtime jar of kafka_2.13 + kafka-clients + a log4j2 slf4j binding,
#              from e2e/kafka/pom.xml)
#   tool      ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark/kafka-<version>/tool-<hash>
#             (KafkaCheck.class and its log4j2.xml, keyed by a hash of their inputs)
# Maven's local repository lives in .../bulwark/m2, so a rebuild downloads nothing.
#
# When both are cached it returns at once. Each is built in a scratch directory
# next to its final place and renamed into it, under a lock, so an interrupted
# or concurrent run never leaves (or sees) a half-filled directory.
#
# Logs go to stderr; stdout is shell assignments:
#   eval "$(hack/kafka.sh)"
#   java -cp "$KAFKA_LIBS/*:$KAFKA_TOOL_DIR" KafkaCheck roundtrip client.properties topic
#
# Environment:
#   KAFKA_VERSION   org.apache.kafka version to fetch (default 4.4.0).
#   XDG_CACHE_HOME  honoured as usual.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/e2e/kafka"

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/bulwark"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS_DIR="$KAFKA_HOME/libs"
M2_REPO="$CACHE_ROOT/m2"

log() { printf '[kafka] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in java javac sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not on PATH (a JDK 17 or newer is needed)"
done

# The libs stamp covers what decides the classpath; the tool hash also covers the
# classpath it was compiled against.
LIBS_STAMP="$({ printf '%s\n' "$KAFKA_VERSION"; cat "$SRC/pom.xml"; } | sha256sum | cut -c1-16)"
TOOL_HASH="$({ printf '%s\n' "$LIBS_STAMP"; cat "$SRC/KafkaCheck.java" "$SRC/log4j2.xml"; } | sha256sum | cut -c1-16)"
TOOL_DIR="$KAFKA_HOME/tool-$TOOL_HASH"

libs_ready() { [[ -f "$LIBS_DIR/.stamp" && "$(cat "$LIBS_DIR/.stamp")" == "$LIBS_STAMP" ]]; }
tool_ready() { [[ -f "$TOOL_DIR/KafkaCheck.class" ]]; }

report() {
  printf 'KAFKA_VERSION=%s\nKAFKA_LIBS=%s\nKAFKA_TOOL_DIR=%s\n' "$KAFKA_VERSION" "$LIBS_DIR" "$TOOL_DIR"
}

if libs_ready && tool_ready; then
  log "Kafka $KAFKA_VERSION and KafkaCheck are cached in $KAFKA_HOME"
  report
  exit 0
fi

mkdir -p "$KAFKA_HOME" "$M2_REPO"

# One build at a time per version (another test binary may be building too).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$KAFKA_HOME/.lock"
  if ! flock -n 9; then
    log "waiting for another build in $KAFKA_HOME"
    flock 9
  fi
  # Holding the lock, no other run is building: drop leftovers of killed runs.
  rm -rf "$KAFKA_HOME"/.tmp.* 2>/dev/null || true
fi

SCRATCH="$(mktemp -d "$KAFKA_HOME/.tmp.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

TOTAL_START=$SECONDS
if libs_ready; then
  log "libs: cached"
else
  command -v mvn >/dev/null 2>&1 || die "mvn is not on PATH (Maven is needed to fetch Kafka)"
  log "libs: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven"
  start=$SECONDS
  if ! mvn -B -q --no-transfer-progress -Dstyle.color=never \
    -f "$SRC/pom.xml" \
    -Dmaven.repo.local="$M2_REPO" \
    -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies \
    -DoutputDirectory="$SCRATCH/libs" >"$SCRATCH/mvn.log" 2>&1; then
    tail -n 40 "$SCRATCH/mvn.log" >&2
    die "Maven could not fetch Kafka $KAFKA_VERSION (see above)"
  fi
  [[ -f "$SCRATCH/libs/kafka_2.13-$KAFKA_VERSION.jar" && -f "$SCRATCH/libs/kafka-clients-$KAFKA_VERSION.jar" ]] ||
    die "Maven finished but the Kafka $KAFKA_VERSION jars are missing"
  printf '%s\n' "$LIBS_STAMP" >"$SCRATCH/libs/.stamp"
  # A directory cannot be renamed over a non-empty one: move the old one aside first.
  if [[ -e "$LIBS_DIR" ]]; then
    mv "$LIBS_DIR" "$SCRATCH/libs.old"
  fi
  mv "$SCRATCH/libs" "$LIBS_DIR"
  log "libs: fetched in $((SECONDS - start))s"
fi

if tool_ready; then
  log "KafkaCheck: cached"
else
  log "KafkaCheck: compiling"
  mkdir -p "$SCRATCH/tool"
  javac -nowarn --release 17 -encoding UTF-8 -cp "$LIBS_DIR/*" -d "$SCRATCH/tool" "$SRC/KafkaCheck.java" >&2
  cp "$SRC/log4j2.xml" "$SCRATCH/tool/log4j2.xml"
  rm -rf "$TOOL_DIR"
  mv "$SCRATCH/tool" "$TOOL_DIR"
fi
log "Kafka $KAFKA_VERSION ready in $((SECONDS - TOTAL_START))s"

report
