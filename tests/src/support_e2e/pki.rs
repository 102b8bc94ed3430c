//! A throwaway PKI made with openssl: a test CA and server certificates for
//! 127.0.0.1 signed by it.

use crate::common::{require_tool, run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A test CA and a server certificate for 127.0.0.1 signed by it.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let openssl = require_tool("openssl");
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new(&openssl).current_dir(dir).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=berth-test-ca",
            "-days",
            "2",
        ]));
        let pki = Pki { dir: dir.to_path_buf() };
        pki.issue("server", "first");
        pki
    }

    /// Issues `<name>.crt`/`<name>.key` for 127.0.0.1 with organisation `org`.
    pub fn issue(&self, name: &str, org: &str) {
        let openssl = require_tool("openssl");
        std::fs::write(self.dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        run(Command::new(&openssl).current_dir(&self.dir).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/O={org}/CN=127.0.0.1"),
        ]));
        run(Command::new(&openssl).current_dir(&self.dir).args([
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}
