/* shardgate: the embedded engine's C ABI.
 *
 * Generated from plugin/src/ffi.rs by cbindgen; do not edit by hand.
 * Link with -lshardgate (libshardgate.so, or libshardgate.a plus
 * -lpthread -ldl -lm). See plugin/README.md. */

#ifndef SHARDGATE_H
#define SHARDGATE_H

#include <stddef.h>
#include <stdint.h>

// The version of this ABI. It changes when a call's signature or meaning does.
#define SHARDGATE_ABI_VERSION 3

// Success.
#define SHARDGATE_OK 0

// `shardgate_verify_chunk`: the bytes are not the published chunk.
#define SHARDGATE_MISMATCH 1

// A pointer argument was null, or a string was not UTF-8.
#define SHARDGATE_ERR_ARGUMENT -1

// The configuration was refused (the error says which key and why).
#define SHARDGATE_ERR_CONFIG -2

// The handle is unknown or its engine was stopped.
#define SHARDGATE_ERR_HANDLE -3

// The engine failed (a listener, the ledger, an origin).
#define SHARDGATE_ERR_ENGINE -4

// The release or file named is not served.
#define SHARDGATE_ERR_NOT_FOUND -5

// A bug inside the library was caught at the boundary.
#define SHARDGATE_ERR_PANIC -6

// The release was taken down: its bytes are no longer vouched for (the
// error carries the reason). Since ABI version 2.
#define SHARDGATE_ERR_TAKEN_DOWN -7

// The release breaks its policy class (the error names the rule), so it is
// not served. Since ABI version 3.
#define SHARDGATE_ERR_REFUSED -8

// An engine, as the host sees it. 0 is never a valid handle.
typedef uint64_t shardgate_handle;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The ABI version this library implements (`SHARDGATE_ABI_VERSION`). A
// host checks it before any other call.
uint32_t shardgate_abi_version(void);

// Starts an engine from a TOML config (the sidecar's format) and writes its
// handle to `*out_handle`. Relative paths in the config are taken from
// `base_dir` (may be null: the host's working directory). The engine serves
// HTTP (and gRPC, if configured) on its own threads until `shardgate_stop`.
// On failure returns a negative code and, if `error` is not null, a message
// in `*error` (free it with `shardgate_string_free`).
//
// # Safety
// `config_toml` (and `base_dir` unless null) must be NUL-terminated strings;
// `out_handle` must point to writable storage; `error` may be null.
int32_t shardgate_start(const char *config_toml,
                        const char *base_dir,
                        shardgate_handle *out_handle,
                        char **error);

// Stops an engine: drains HTTP (up to `server.shutdown_grace`), stops gRPC,
// makes the final usage commit, and ends its threads. Waits for calls in
// progress on other threads. The handle is invalid afterwards.
//
// # Safety
// `error` may be null or must point to writable storage for one `char *`.
int32_t shardgate_stop(shardgate_handle handle, char **error);

// Applies a new TOML config to a running engine: releases, trusted keys,
// origins, tenants. A config that does not validate is refused and the
// running one kept. Listener settings need a stop and start.
//
// # Safety
// `config_toml` must be a NUL-terminated string; `error` may be null.
int32_t shardgate_reload(shardgate_handle handle, const char *config_toml, char **error);

// Writes the engine's stats as a JSON object to `*out_json`: listen
// addresses, releases served, tier sizes, verification and hit counters,
// and the bytes billed to each tenant this month.
//
// # Safety
// `out_json` must point to writable storage for one `char *`; `error` may be null.
int32_t shardgate_stats_json(shardgate_handle handle, char **out_json, char **error);

// Writes closed usage records after `after_cursor` (null or "" for the
// start), at most `limit` (1 to 10000), as JSON `{"records": [...],
// "next_cursor": "..."}` to `*out_json`: the same records, ids and cursors
// as the gRPC `ListUsage`.
//
// # Safety
// `after_cursor` may be null or a NUL-terminated string; `out_json` must
// point to writable storage; `error` may be null.
int32_t shardgate_usage_json(shardgate_handle handle,
                             const char *after_cursor,
                             uint32_t limit,
                             char **out_json,
                             char **error);

// Checks `len` bytes at `data` as chunk `chunk_index` of file `path` in
// release `release` (`NAME@VERSION`, or `NAME@TAG`) against the signed
// manifest's chunk table (fetched from the origins if not cached). Returns
// `SHARDGATE_OK` when they are the published bytes, `SHARDGATE_MISMATCH`
// when not, or a negative code. For a host that serves bytes itself.
//
// # Safety
// `release` and `path` must be NUL-terminated strings; `data` must point to
// `len` readable bytes (it may be null only when `len` is 0); `error` may be null.
int32_t shardgate_verify_chunk(shardgate_handle handle,
                               const char *release,
                               const char *path,
                               uint64_t chunk_index,
                               const uint8_t *data,
                               size_t len,
                               char **error);

// Frees a string returned by this library (an error message or JSON). Null is ignored.
//
// # Safety
// `s` must be null or a string this library returned, not freed before.
void shardgate_string_free(char *s);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* SHARDGATE_H */
