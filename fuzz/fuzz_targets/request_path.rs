//! A hostile request path may only produce a route or a 4xx: never a panic,
//! and never a file path that could leave the release directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::http::route::{Route, parse_route};
use shardgate::release::manifest::check_path;

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let Ok(route) = parse_route(&path) else { return };
    let _ = route.label();
    match route {
        Route::File { name, version, path: file } => {
            assert!(!name.is_empty(), "empty dataset name for {path:?}");
            assert!(!version.contains('/'), "version {version:?} holds a slash");
            assert!(check_path(&file).is_ok(), "{file:?} fails check_path");
            assert!(!file.starts_with('/'), "{file:?} is absolute");
            assert!(!file.split('/').any(|c| c == ".."), "{file:?} has a `..` component");
            assert!(!file.contains('\0') && !file.contains('\\'), "{file:?} holds NUL or backslash");
        }
        Route::Blob { hash } => {
            let s = hash.to_string();
            assert!(s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "bad hash {s:?}");
        }
        _ => {}
    }
});
