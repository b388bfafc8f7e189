/* A C host of the embedded engine, as a storage node would be: start it from
 * a TOML config, fetch a range over HTTP and check it against the source
 * bytes, verify chunks it holds itself, read stats and usage, reload, call it
 * from several threads, stop it, and use the handle after stop.
 *
 *   host CONFIG.toml NAME@VERSION PATH SOURCE_FILE CHUNK_SIZE
 *
 * Exits 0 and prints "host ok" when every check passed. */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shardgate.h"

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "host: check failed at line %d: ", __LINE__);           \
      fprintf(stderr, __VA_ARGS__);                                            \
      fprintf(stderr, "\n");                                                   \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  CHECK(f != NULL, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  CHECK(buf != NULL, "out of memory");
  CHECK(fread(buf, 1, (size_t)n, f) == (size_t)n, "short read of %s", path);
  buf[n] = '\0';
  fclose(f);
  if (len) *len = (size_t)n;
  return buf;
}

/* GET with a Range header over a plain socket; returns the status and the
 * body (malloc'd) in *body. */
static int http_get_range(int port, const char *target, size_t first, size_t last, char **body,
                          size_t *body_len) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0, "socket");
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0, "connect to port %d", port);
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=%zu-%zu\r\nConnection: close\r\n\r\n",
                   target, first, last);
  CHECK(write(fd, req, (size_t)n) == n, "write request");
  size_t cap = 1 << 16, len = 0;
  char *resp = malloc(cap);
  for (;;) {
    if (len == cap) resp = realloc(resp, cap *= 2);
    ssize_t r = read(fd, resp + len, cap - len);
    CHECK(r >= 0, "read response");
    if (r == 0) break;
    len += (size_t)r;
  }
  close(fd);
  if (len == cap) resp = realloc(resp, cap + 1);
  resp[len] = '\0';
  int status = 0;
  CHECK(sscanf(resp, "HTTP/1.1 %d", &status) == 1, "no status line");
  char *end = NULL;
  for (size_t i = 0; i + 3 < len; i++) {
    if (memcmp(resp + i, "\r\n\r\n", 4) == 0) {
      end = resp + i + 4;
      break;
    }
  }
  CHECK(end != NULL, "no end of headers");
  *body_len = len - (size_t)(end - resp);
  *body = malloc(*body_len + 1);
  memcpy(*body, end, *body_len);
  free(resp);
  return status;
}

struct worker {
  shardgate_handle h;
  const char *release, *path;
  const uint8_t *chunk;
  size_t chunk_len;
  int failures;
};

static void *work(void *arg) {
  struct worker *w = arg;
  for (int i = 0; i < 25; i++) {
    char *json = NULL, *err = NULL;
    if (shardgate_stats_json(w->h, &json, &err) != SHARDGATE_OK) w->failures++;
    shardgate_string_free(json);
    shardgate_string_free(err);
    err = NULL;
    if (shardgate_verify_chunk(w->h, w->release, w->path, 0, w->chunk, w->chunk_len, &err) != SHARDGATE_OK)
      w->failures++;
    shardgate_string_free(err);
  }
  return NULL;
}

int main(int argc, char **argv) {
  CHECK(argc == 6, "usage: host CONFIG NAME@VERSION PATH SOURCE CHUNK_SIZE");
  const char *release = argv[2], *path = argv[3];
  size_t chunk_size = (size_t)strtoull(argv[5], NULL, 10);
  size_t src_len = 0;
  char *config = read_file(argv[1], NULL);
  char *src = read_file(argv[4], &src_len);
  CHECK(src_len > 2 * chunk_size, "the source file must span more than two chunks");

  CHECK(shardgate_abi_version() == SHARDGATE_ABI_VERSION, "ABI version %u, header says %d",
        shardgate_abi_version(), SHARDGATE_ABI_VERSION);

  /* Bad input is refused with a message, never a crash. */
  shardgate_handle h = 0;
  char *err = NULL;
  CHECK(shardgate_start(NULL, NULL, &h, &err) == SHARDGATE_ERR_ARGUMENT, "null config accepted");
  CHECK(err != NULL && strstr(err, "config_toml") != NULL, "error names the argument: %s", err);
  shardgate_string_free(err);
  err = NULL;
  CHECK(shardgate_start("[server]\nlisten = 7\n", NULL, &h, &err) == SHARDGATE_ERR_CONFIG, "bad config accepted");
  CHECK(err != NULL && strstr(err, "listen") != NULL, "error names the key: %s", err);
  shardgate_string_free(err);
  err = NULL;
  CHECK(shardgate_start(config, NULL, NULL, NULL) == SHARDGATE_ERR_ARGUMENT, "null out_handle accepted");

  CHECK(shardgate_start(config, NULL, &h, &err) == SHARDGATE_OK, "start: %s", err ? err : "?");
  CHECK(h != 0, "handle 0");

  char *stats = NULL;
  CHECK(shardgate_stats_json(h, &stats, NULL) == SHARDGATE_OK, "stats");
  int port = 0;
  char *listen = strstr(stats, "\"listen\":\"http://127.0.0.1:");
  CHECK(listen != NULL && sscanf(listen, "\"listen\":\"http://127.0.0.1:%d", &port) == 1, "listen in %s", stats);
  CHECK(strstr(stats, "\"releases\":1") != NULL, "one release in %s", stats);
  shardgate_string_free(stats);

  /* A range that crosses a chunk boundary, over HTTP, checked byte for byte. */
  char target[512];
  const char *at = strchr(release, '@');
  snprintf(target, sizeof target, "/v1/datasets/%.*s/%s/files/%s", (int)(at - release), release, at + 1, path);
  size_t first = chunk_size - 100, last = chunk_size + 4999;
  char *body = NULL;
  size_t body_len = 0;
  int status = http_get_range(port, target, first, last, &body, &body_len);
  CHECK(status == 206, "status %d for %s", status, target);
  CHECK(body_len == last - first + 1 && memcmp(body, src + first, body_len) == 0, "range bytes differ");
  free(body);

  /* The node checks bytes it holds itself. */
  err = NULL;
  CHECK(shardgate_verify_chunk(h, release, path, 1, (const uint8_t *)src + chunk_size, chunk_size, &err) ==
            SHARDGATE_OK,
        "verify chunk 1: %s", err ? err : "?");
  char *bad = malloc(chunk_size);
  memcpy(bad, src + chunk_size, chunk_size);
  bad[chunk_size / 2] ^= 1;
  CHECK(shardgate_verify_chunk(h, release, path, 1, (const uint8_t *)bad, chunk_size, &err) == SHARDGATE_MISMATCH,
        "a flipped bit verified");
  CHECK(err != NULL && strstr(err, "does not match") != NULL, "mismatch message: %s", err);
  shardgate_string_free(err);
  err = NULL;
  free(bad);
  CHECK(shardgate_verify_chunk(h, release, "no/such/file", 0, (const uint8_t *)src, chunk_size, &err) ==
            SHARDGATE_ERR_NOT_FOUND,
        "unknown file");
  shardgate_string_free(err);
  err = NULL;
  CHECK(shardgate_verify_chunk(h, release, path, 1, NULL, chunk_size, NULL) == SHARDGATE_ERR_ARGUMENT,
        "null data accepted");
  CHECK(shardgate_verify_chunk(h, release, path, 1u << 30, (const uint8_t *)src, chunk_size, NULL) ==
            SHARDGATE_ERR_ARGUMENT,
        "chunk index past the end accepted");

  /* Several host threads at once. */
  pthread_t threads[4];
  struct worker workers[4];
  for (int i = 0; i < 4; i++) {
    workers[i] = (struct worker){h, release, path, (const uint8_t *)src, chunk_size, 0};
    CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0, "pthread_create");
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    CHECK(workers[i].failures == 0, "worker %d: %d failed calls", i, workers[i].failures);
  }

  /* Reload: the same config is applied; a broken one is refused and the engine keeps serving. */
  CHECK(shardgate_reload(h, config, &err) == SHARDGATE_OK, "reload: %s", err ? err : "?");
  CHECK(shardgate_reload(h, "[fetch]\nspan = \"1KiB\"\n", &err) == SHARDGATE_ERR_CONFIG, "bad reload accepted");
  CHECK(err != NULL && strstr(err, "fetch.span") != NULL, "reload error names the key: %s", err);
  shardgate_string_free(err);
  err = NULL;
  status = http_get_range(port, target, 0, 99, &body, &body_len);
  CHECK(status == 206 && body_len == 100 && memcmp(body, src, 100) == 0, "serving after a refused reload");
  free(body);

  char *usage = NULL;
  CHECK(shardgate_usage_json(h, NULL, 100, &usage, NULL) == SHARDGATE_OK, "usage");
  CHECK(strstr(usage, "\"records\":") != NULL, "usage JSON: %s", usage);
  shardgate_string_free(usage);
  CHECK(shardgate_usage_json(h, NULL, 0, &usage, NULL) == SHARDGATE_ERR_ARGUMENT, "limit 0 accepted");

  CHECK(shardgate_stop(h, &err) == SHARDGATE_OK, "stop: %s", err ? err : "?");
  /* After stop the handle is an error, not a crash. */
  CHECK(shardgate_stats_json(h, &stats, &err) == SHARDGATE_ERR_HANDLE, "stats after stop");
  shardgate_string_free(err);
  err = NULL;
  CHECK(shardgate_stop(h, NULL) == SHARDGATE_ERR_HANDLE, "second stop");
  CHECK(shardgate_reload(h, config, NULL) == SHARDGATE_ERR_HANDLE, "reload after stop");
  CHECK(shardgate_stats_json(987654321, &stats, NULL) == SHARDGATE_ERR_HANDLE, "a handle never issued");

  free(config);
  free(src);
  printf("host ok\n");
  return 0;
}
