// A Go host of the embedded engine through cgo, with no Go modules: the shape
// of a go-btfs daemon plugin. It starts the engine from a TOML config, fetches
// a range over HTTP and checks it against the source bytes, verifies a chunk
// it holds itself, reads stats and usage, reloads, stops, and uses the handle
// after stop.
//
//	gohost CONFIG.toml NAME@VERSION PATH SOURCE_FILE CHUNK_SIZE
//
// Prints "gohost ok" and exits 0 when every check passed.
package main

/*
#cgo LDFLAGS: -lshardgate
#include <stdlib.h>
#include "shardgate.h"
*/
import "C"

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"unsafe"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gohost: "+format+"\n", args...)
	os.Exit(1)
}

// takeString copies a library-owned string and frees it.
func takeString(p *C.char) string {
	if p == nil {
		return ""
	}
	defer C.shardgate_string_free(p)
	return C.GoString(p)
}

type engine struct{ h C.shardgate_handle }

func start(config string) (*engine, error) {
	cfg := C.CString(config)
	defer C.free(unsafe.Pointer(cfg))
	var h C.shardgate_handle
	var cerr *C.char
	if rc := C.shardgate_start(cfg, nil, &h, &cerr); rc != C.SHARDGATE_OK {
		return nil, fmt.Errorf("start (%d): %s", int(rc), takeString(cerr))
	}
	return &engine{h}, nil
}

func (e *engine) stats() (map[string]interface{}, int) {
	var out, cerr *C.char
	rc := int(C.shardgate_stats_json(e.h, &out, &cerr))
	takeString(cerr)
	if rc != C.SHARDGATE_OK {
		return nil, rc
	}
	var m map[string]interface{}
	if err := json.Unmarshal([]byte(takeString(out)), &m); err != nil {
		fail("stats JSON: %v", err)
	}
	return m, rc
}

func (e *engine) reload(config string) (int, string) {
	cfg := C.CString(config)
	defer C.free(unsafe.Pointer(cfg))
	var cerr *C.char
	rc := int(C.shardgate_reload(e.h, cfg, &cerr))
	return rc, takeString(cerr)
}

func (e *engine) verify(release, path string, index uint64, data []byte) (int, string) {
	r, p := C.CString(release), C.CString(path)
	defer C.free(unsafe.Pointer(r))
	defer C.free(unsafe.Pointer(p))
	var cerr *C.char
	rc := int(C.shardgate_verify_chunk(e.h, r, p, C.uint64_t(index), (*C.uint8_t)(unsafe.Pointer(&data[0])), C.size_t(len(data)), &cerr))
	return rc, takeString(cerr)
}

func (e *engine) stop() (int, string) {
	var cerr *C.char
	rc := int(C.shardgate_stop(e.h, &cerr))
	return rc, takeString(cerr)
}

func main() {
	if len(os.Args) != 6 {
		fail("usage: gohost CONFIG NAME@VERSION PATH SOURCE CHUNK_SIZE")
	}
	configBytes, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	config, release, path := string(configBytes), os.Args[2], os.Args[3]
	src, err := os.ReadFile(os.Args[4])
	if err != nil {
		fail("%v", err)
	}
	chunk, _ := strconv.Atoi(os.Args[5])

	if v := C.shardgate_abi_version(); v != C.SHARDGATE_ABI_VERSION {
		fail("ABI version %d, header says %d", v, C.SHARDGATE_ABI_VERSION)
	}
	if _, err := start("[server]\nlisten = 7\n"); err == nil || !strings.Contains(err.Error(), "listen") {
		fail("a bad config: %v", err)
	}
	e, err := start(config)
	if err != nil {
		fail("%v", err)
	}
	stats, rc := e.stats()
	if rc != C.SHARDGATE_OK {
		fail("stats: %d", rc)
	}
	listen, _ := stats["listen"].(string)
	name, version, _ := strings.Cut(release, "@")
	url := fmt.Sprintf("%s/v1/datasets/%s/%s/files/%s", listen, name, version, path)

	first, last := chunk-100, chunk+4999
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, last))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fail("GET %s: %v", url, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 206 || !bytes.Equal(body, src[first:last+1]) {
		fail("range: status %d, %d bytes, err %v", resp.StatusCode, len(body), err)
	}

	if rc, msg := e.verify(release, path, 1, src[chunk:2*chunk]); rc != C.SHARDGATE_OK {
		fail("verify chunk 1: %d %s", rc, msg)
	}
	bad := append([]byte(nil), src[chunk:2*chunk]...)
	bad[10] ^= 0x80
	if rc, _ := e.verify(release, path, 1, bad); rc != C.SHARDGATE_MISMATCH {
		fail("a flipped bit verified: %d", rc)
	}
	if rc, msg := e.reload(config); rc != C.SHARDGATE_OK {
		fail("reload: %d %s", rc, msg)
	}
	if rc, msg := e.reload("[fetch]\nspan = \"1KiB\"\n"); rc != C.SHARDGATE_ERR_CONFIG || !strings.Contains(msg, "fetch.span") {
		fail("a bad reload: %d %s", rc, msg)
	}
	var usage, cerr *C.char
	if rc := C.shardgate_usage_json(e.h, nil, 100, &usage, &cerr); rc != C.SHARDGATE_OK {
		fail("usage: %d %s", int(rc), takeString(cerr))
	}
	if u := takeString(usage); !strings.Contains(u, "\"records\"") {
		fail("usage JSON: %s", u)
	}
	if rc, msg := e.stop(); rc != C.SHARDGATE_OK {
		fail("stop: %d %s", rc, msg)
	}
	if _, rc := e.stats(); rc != C.SHARDGATE_ERR_HANDLE {
		fail("stats after stop: %d", rc)
	}
	if rc, _ := e.stop(); rc != C.SHARDGATE_ERR_HANDLE {
		fail("second stop: %d", rc)
	}
	fmt.Println("gohost ok")
}
