//! Test certificates, made when a test runs with the `openssl` command (no
//! private key is ever committed): CAs, server certificates for
//! `127.0.0.1`/`localhost`, client certificates. P-256 keys, valid for two
//! days.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of generated keys and certificates, removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

/// A certificate (PEM) and its private key (PEM).
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

fn openssl(cwd: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the openssl command is needed to make test certificates");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// An empty directory.
    pub fn new() -> Self {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A path in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed CA `name` (`name.crt`, `name.key`).
    pub fn ca(&self, name: &str) -> Pair {
        let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "2",
            ],
        );
        Pair {
            cert: self.path(&cert),
            key: self.path(&key),
        }
    }

    fn issue(&self, ca: &Pair, name: &str, extensions: &str) -> Pair {
        let (cert, key, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        std::fs::write(self.path(&ext), extensions).expect("write extensions");
        openssl(
            self.dir.path(),
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                ca.cert.to_str().expect("utf-8 path"),
                "-CAkey",
                ca.key.to_str().expect("utf-8 path"),
                "-set_serial",
                &format!("{}", rand::random::<u32>()),
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        Pair {
            cert: self.path(&cert),
            key: self.path(&key),
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`, issued by `ca`.
    pub fn server(&self, ca: &Pair, name: &str) -> Pair {
        self.issue(
            ca,
            name,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n",
        )
    }

    /// A client certificate issued by `ca`.
    pub fn client(&self, ca: &Pair, name: &str) -> Pair {
        self.issue(
            ca,
            name,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
    }
}
