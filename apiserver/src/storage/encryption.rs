//! Encryption of stored values at rest (`--encryption-provider-config`), as Kubernetes
//! defines it, so that a Secret's data never reaches the data directory or etcd in clear.
//!
//! - **Config.** An `EncryptionConfiguration` (`apiserver.config.k8s.io/v1`) lists rules,
//!   each a set of resources (`secrets`, `deployments.apps`, `*.apps`, `*.` for the core
//!   group, `*.*` for everything) with an ordered list of providers: `identity`,
//!   `aescbc`, `aesgcm` and `secretbox`, each with named base64 keys. It is validated as
//!   Kubernetes validates it, and every problem is reported with its field path.
//!   `kms` providers are refused: this apiserver has no KMS plugin client.
//! - **Wire format.** Exactly Kubernetes': a value is stored as
//!   `k8s:enc:<provider>:v1:<key name>:` followed by, for `aescbc`, a 16-byte random IV
//!   and AES-CBC with PKCS#7 padding; for `aesgcm`, a 12-byte random nonce and AES-GCM
//!   ciphertext and tag, with the store key (`/registry/secrets/<ns>/<name>`) as
//!   additional authenticated data; for `secretbox`, a 24-byte random nonce and NaCl
//!   secretbox (XSalsa20-Poly1305, tag first). `identity` stores the value as it is.
//!   So a data set written by Kubernetes' apiserver with the same config reads here, and
//!   the other way round.
//! - **Reads and writes.** The first provider's first key encrypts every write; a read
//!   tries each provider's key whose prefix the value carries. A value with no prefix is
//!   plaintext, readable only if `identity` is listed (a value carrying `k8s:enc:` but
//!   matching no listed key is an error, not plaintext). Resources no rule names are
//!   stored as they are, and an encrypted value found under one is an error, as in
//!   Kubernetes.
//! - **Store.** [`EncryptingStore`] wraps any [`Store`]: it encrypts on create and
//!   update and decrypts everything it returns (gets, ranges, conflicts, deletes, watch
//!   events), so the watch caches and everything above them see plaintext. A value that
//!   cannot be decrypted is a [`StoreError::Corrupt`] naming the key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, InnerIvInit};
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use async_trait::async_trait;
use base64::Engine;
use crypto_secretbox::aead::generic_array::GenericArray;
use futures::StreamExt;
use rand::TryRngCore;
use serde::Deserialize;
use tracing::{info, warn};

use super::{
    KeyValue, RangeOptions, RangeResult, Revision, Store, StoreError, WatchEvent, WatchStream,
};
use crate::registry;

/// The `apiVersion` of an `EncryptionConfiguration`.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// The `kind` of an `EncryptionConfiguration`.
pub const KIND: &str = "EncryptionConfiguration";

/// Every encrypted value starts with this; `identity` refuses to read such a value.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
const AES_BLOCK: usize = 16;
const GCM_NONCE: usize = 12;
const GCM_TAG: usize = 16;
const SECRETBOX_NONCE: usize = 24;
const SECRETBOX_TAG: usize = 16;
/// Key lengths Kubernetes accepts (those of AES-128/192/256; secretbox's one key size).
const AES_KEY_SIZES: &[usize] = &[16, 24, 32];
const SECRETBOX_KEY_SIZES: &[usize] = &[32];

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("reading encryption provider config {path} failed")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encryption provider config {path} is not a valid EncryptionConfiguration: {source}")]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error(
        "encryption provider config {path} is invalid: {}",
        join_field_errors(errors)
    )]
    InvalidConfig {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
    #[error("encrypting with {provider} key {key_name:?} failed")]
    Encrypt {
        provider: &'static str,
        key_name: String,
    },
    #[error("{provider} key {key_name:?} could not decrypt the value: {reason}")]
    Decrypt {
        provider: &'static str,
        key_name: String,
        reason: &'static str,
    },
    /// An encrypted value where only `identity` applies (Kubernetes' wording).
    #[error("identity transformer tried to read encrypted data")]
    EncryptedDataForIdentity,
    /// A value whose prefix matches none of the configured providers (Kubernetes' wording).
    #[error("no matching prefix found")]
    NoMatchingPrefix,
    #[error("reading random bytes for a nonce failed")]
    Random(#[source] rand::rand_core::OsError),
}

/// One problem in an `EncryptionConfiguration`: the field's path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `resources[0].providers[1].aescbc.keys[0].secret`
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join_field_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------
// The configuration file

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    resources: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    identity: Option<RawIdentity>,
    aescbc: Option<RawKeys>,
    aesgcm: Option<RawKeys>,
    secretbox: Option<RawKeys>,
    /// Only recognised, to refuse it clearly.
    kms: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

/// A group-resource as a rule names it; `*` is a wildcard on either side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupResource {
    group: String,
    resource: String,
}

impl GroupResource {
    /// As Kubernetes' `schema.ParseGroupResource`: `deployments.apps`, `secrets`, `*.`.
    fn parse(s: &str) -> GroupResource {
        match s.split_once('.') {
            Some((resource, group)) => GroupResource {
                group: group.to_string(),
                resource: resource.to_string(),
            },
            None => GroupResource {
                group: String::new(),
                resource: s.to_string(),
            },
        }
    }

    fn any_in_group(group: &str) -> GroupResource {
        GroupResource {
            group: group.to_string(),
            resource: "*".to_string(),
        }
    }

    fn is_any(&self) -> bool {
        self.group == "*" && self.resource == "*"
    }
}

impl fmt::Display for GroupResource {
    /// As the config spells it (`*.` for every core resource).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() && self.resource == "*" {
            write!(f, "*.")
        } else if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Providers

/// An AES key schedule of one of the three sizes.
#[derive(Clone)]
enum AesKey {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, U12>;

enum Gcm {
    A128(aes_gcm::Aes128Gcm),
    A192(Aes192Gcm),
    A256(aes_gcm::Aes256Gcm),
}

enum Cipher {
    Identity,
    AesCbc(Box<AesKey>),
    AesGcm(Box<Gcm>),
    Secretbox(Box<crypto_secretbox::XSalsa20Poly1305>),
}

/// Why a stored value could not be decrypted (Kubernetes' messages where it has them).
mod reason {
    pub const SHORT: &str = "the stored data was shorter than the required size";
    pub const NOT_BLOCKS: &str = "the stored data is not a multiple of the block size";
    pub const PKCS7_DATA: &str = "invalid PKCS7 data (empty or not padded)";
    pub const PKCS7_PADDING: &str = "invalid padding on input";
    pub const AUTH: &str = "message authentication failed";
}

impl AesKey {
    fn new(secret: &[u8]) -> Option<AesKey> {
        Some(match secret.len() {
            16 => AesKey::A128(aes::Aes128::new_from_slice(secret).ok()?),
            24 => AesKey::A192(aes::Aes192::new_from_slice(secret).ok()?),
            32 => AesKey::A256(aes::Aes256::new_from_slice(secret).ok()?),
            _ => return None,
        })
    }

    /// AES-CBC of `plaintext` with PKCS#7 padding under `iv` (the IV is not included).
    fn cbc_encrypt(&self, iv: &[u8; AES_BLOCK], plaintext: &[u8]) -> Option<Vec<u8>> {
        Some(match self {
            AesKey::A128(k) => cbc::Encryptor::inner_iv_slice_init(k.clone(), iv)
                .ok()?
                .encrypt_padded_vec::<Pkcs7>(plaintext),
            AesKey::A192(k) => cbc::Encryptor::inner_iv_slice_init(k.clone(), iv)
                .ok()?
                .encrypt_padded_vec::<Pkcs7>(plaintext),
            AesKey::A256(k) => cbc::Encryptor::inner_iv_slice_init(k.clone(), iv)
                .ok()?
                .encrypt_padded_vec::<Pkcs7>(plaintext),
        })
    }

    /// The inverse of [`Self::cbc_encrypt`] on `IV || ciphertext`, checking the padding
    /// as Kubernetes' `aescbc` transformer does.
    fn cbc_decrypt(&self, data: &[u8]) -> Result<Vec<u8>, &'static str> {
        if data.len() < AES_BLOCK {
            return Err(reason::SHORT);
        }
        let (iv, body) = data.split_at(AES_BLOCK);
        if body.len() % AES_BLOCK != 0 {
            return Err(reason::NOT_BLOCKS);
        }
        let plain = match self {
            AesKey::A128(k) => cbc::Decryptor::inner_iv_slice_init(k.clone(), iv)
                .map_err(|_| reason::SHORT)?
                .decrypt_padded_vec::<NoPadding>(body),
            AesKey::A192(k) => cbc::Decryptor::inner_iv_slice_init(k.clone(), iv)
                .map_err(|_| reason::SHORT)?
                .decrypt_padded_vec::<NoPadding>(body),
            AesKey::A256(k) => cbc::Decryptor::inner_iv_slice_init(k.clone(), iv)
                .map_err(|_| reason::SHORT)?
                .decrypt_padded_vec::<NoPadding>(body),
        };
        let mut plain = plain.map_err(|_| reason::NOT_BLOCKS)?;
        let pad = plain.last().copied().ok_or(reason::PKCS7_DATA)?;
        let pad_len = usize::from(pad);
        if pad_len == 0 || pad_len > plain.len() {
            return Err(reason::PKCS7_DATA);
        }
        let size = plain.len() - pad_len;
        if plain[size..].iter().any(|&b| b != pad) {
            return Err(reason::PKCS7_PADDING);
        }
        plain.truncate(size);
        Ok(plain)
    }
}

impl Gcm {
    fn new(secret: &[u8]) -> Option<Gcm> {
        Some(match secret.len() {
            16 => Gcm::A128(aes_gcm::Aes128Gcm::new_from_slice(secret).ok()?),
            24 => Gcm::A192(Aes192Gcm::new_from_slice(secret).ok()?),
            32 => Gcm::A256(aes_gcm::Aes256Gcm::new_from_slice(secret).ok()?),
            _ => return None,
        })
    }

    /// Ciphertext and tag of `plaintext` (the nonce is not included).
    fn seal(&self, nonce: &[u8; GCM_NONCE], plaintext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let nonce = aes_gcm::Nonce::<U12>::from(*nonce);
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        match self {
            Gcm::A128(c) => c.encrypt(&nonce, payload),
            Gcm::A192(c) => c.encrypt(&nonce, payload),
            Gcm::A256(c) => c.encrypt(&nonce, payload),
        }
        .ok()
    }

    /// The inverse of [`Self::seal`] on `nonce || ciphertext || tag`.
    fn open(&self, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, &'static str> {
        if data.len() < GCM_NONCE + GCM_TAG {
            return Err(reason::SHORT);
        }
        let (nonce, body) = data.split_at(GCM_NONCE);
        let nonce = aes_gcm::Nonce::<U12>::try_from(nonce).map_err(|_| reason::SHORT)?;
        let payload = Payload { msg: body, aad };
        match self {
            Gcm::A128(c) => c.decrypt(&nonce, payload),
            Gcm::A192(c) => c.decrypt(&nonce, payload),
            Gcm::A256(c) => c.decrypt(&nonce, payload),
        }
        .map_err(|_| reason::AUTH)
    }
}

fn secretbox_seal(
    cipher: &crypto_secretbox::XSalsa20Poly1305,
    nonce: &[u8; SECRETBOX_NONCE],
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    use crypto_secretbox::aead::Aead as _;
    cipher
        .encrypt(GenericArray::from_slice(nonce), plaintext)
        .ok()
}

fn secretbox_open(
    cipher: &crypto_secretbox::XSalsa20Poly1305,
    data: &[u8],
) -> Result<Vec<u8>, &'static str> {
    use crypto_secretbox::aead::Aead as _;
    if data.len() < SECRETBOX_NONCE + SECRETBOX_TAG {
        return Err(reason::SHORT);
    }
    let (nonce, body) = data.split_at(SECRETBOX_NONCE);
    cipher
        .decrypt(GenericArray::from_slice(nonce), body)
        .map_err(|_| reason::AUTH)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], EncryptionError> {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(EncryptionError::Random)?;
    Ok(bytes)
}

/// One provider key: the prefix its values carry and the cipher behind it.
struct Transformer {
    /// `k8s:enc:aescbc:v1:key1:`; empty for `identity`.
    prefix: Vec<u8>,
    provider: &'static str,
    key_name: String,
    cipher: Cipher,
}

impl fmt::Debug for Transformer {
    /// Names only: key material is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Transformer {
    fn identity() -> Transformer {
        Transformer {
            prefix: Vec::new(),
            provider: "identity",
            key_name: String::new(),
            cipher: Cipher::Identity,
        }
    }

    fn describe(&self) -> String {
        if self.key_name.is_empty() {
            self.provider.to_string()
        } else {
            format!("{}:{}", self.provider, self.key_name)
        }
    }

    /// The stored form of `plaintext` under store key `key` (prefix included).
    fn seal(&self, key: &str, plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let failed = || EncryptionError::Encrypt {
            provider: self.provider,
            key_name: self.key_name.clone(),
        };
        let mut out = Vec::with_capacity(self.prefix.len() + 64 + plaintext.len());
        out.extend_from_slice(&self.prefix);
        match &self.cipher {
            Cipher::Identity => out.extend_from_slice(plaintext),
            Cipher::AesCbc(aes) => {
                let iv = random_bytes::<AES_BLOCK>()?;
                out.extend_from_slice(&iv);
                out.extend(aes.cbc_encrypt(&iv, plaintext).ok_or_else(failed)?);
            }
            Cipher::AesGcm(gcm) => {
                let nonce = random_bytes::<GCM_NONCE>()?;
                out.extend_from_slice(&nonce);
                out.extend(
                    gcm.seal(&nonce, plaintext, key.as_bytes())
                        .ok_or_else(failed)?,
                );
            }
            Cipher::Secretbox(cipher) => {
                let nonce = random_bytes::<SECRETBOX_NONCE>()?;
                out.extend_from_slice(&nonce);
                out.extend(secretbox_seal(cipher, &nonce, plaintext).ok_or_else(failed)?);
            }
        }
        Ok(out)
    }

    /// The plaintext of `data` (the value after this transformer's prefix).
    fn open(&self, key: &str, data: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let result = match &self.cipher {
            Cipher::Identity => {
                if data.starts_with(ENCRYPTED_PREFIX) {
                    return Err(EncryptionError::EncryptedDataForIdentity);
                }
                Ok(data.to_vec())
            }
            Cipher::AesCbc(aes) => aes.cbc_decrypt(data),
            Cipher::AesGcm(gcm) => gcm.open(data, key.as_bytes()),
            Cipher::Secretbox(cipher) => secretbox_open(cipher, data),
        };
        result.map_err(|reason| EncryptionError::Decrypt {
            provider: self.provider,
            key_name: self.key_name.clone(),
            reason,
        })
    }
}

/// The providers of one resource, in order: the first encrypts, all may decrypt.
#[derive(Debug)]
struct ProviderChain {
    transformers: Vec<Arc<Transformer>>,
}

impl ProviderChain {
    fn encrypt(&self, key: &str, plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        match self.transformers.first() {
            Some(first) => first.seal(key, plaintext),
            None => Ok(plaintext.to_vec()),
        }
    }

    /// [`Self::encrypt`] without copying a value that is stored as it is.
    fn encrypt_owned(&self, key: &str, plaintext: Vec<u8>) -> Result<Vec<u8>, EncryptionError> {
        match self.transformers.first() {
            Some(first) if first.prefix.is_empty() => Ok(plaintext),
            Some(first) => first.seal(key, &plaintext),
            None => Ok(plaintext),
        }
    }

    fn has_identity(&self) -> bool {
        self.transformers.iter().any(|t| t.prefix.is_empty())
    }

    /// As Kubernetes' prefix transformers: the first transformer whose prefix the value
    /// has reads it; an `identity` that refuses (encrypted data) lets the next ones try.
    fn decrypt(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let mut identity_error = None;
        for t in &self.transformers {
            let Some(rest) = stored.strip_prefix(t.prefix.as_slice()) else {
                continue;
            };
            match t.open(key, rest) {
                Err(e) if t.prefix.is_empty() => identity_error = Some(e),
                result => return result,
            }
        }
        Err(identity_error.unwrap_or(EncryptionError::NoMatchingPrefix))
    }

    /// [`Self::decrypt`] without copying a plaintext value: every provider but
    /// `identity` has a `k8s:enc:` prefix, so a value without one is `identity`'s or
    /// nobody's.
    fn decrypt_owned(&self, key: &str, stored: Vec<u8>) -> Result<Vec<u8>, EncryptionError> {
        if stored.starts_with(ENCRYPTED_PREFIX) {
            self.decrypt(key, &stored)
        } else if self.has_identity() {
            Ok(stored)
        } else {
            Err(EncryptionError::NoMatchingPrefix)
        }
    }

    fn describe(&self) -> String {
        self.transformers
            .iter()
            .map(|t| t.describe())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// The loaded configuration

/// A validated `EncryptionConfiguration`: which provider chain applies to which store
/// key. Key material stays inside; `Debug` prints provider and key names only.
pub struct EncryptionConfig {
    /// Storage resource (the `<resource>` of `/registry/<resource>/...`) → the chain of
    /// the rule that names it exactly.
    exact: HashMap<String, Arc<ProviderChain>>,
    /// Storage resource → the chain of a `*.<group>` rule covering it.
    by_group: HashMap<String, Arc<ProviderChain>>,
    /// The chain of a `*.*` rule.
    any: Option<Arc<ProviderChain>>,
    /// What applies to keys no rule covers: plaintext, refusing encrypted values.
    unconfigured: Arc<ProviderChain>,
    /// `(rule as written, chain)` for logs.
    rules: Vec<(String, Arc<ProviderChain>)>,
}

impl fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (rule, chain) in &self.rules {
            m.entry(rule, &chain.describe());
        }
        m.finish()
    }
}

/// Reads and validates the `EncryptionConfiguration` at `path`.
pub fn load_config(path: &Path) -> Result<EncryptionConfig, EncryptionError> {
    let text = std::fs::read_to_string(path).map_err(|source| EncryptionError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    EncryptionConfig::from_yaml(&text, path)
}

/// Wraps `store` so that the resources the config at `config_path` names are encrypted
/// at rest: what `--encryption-provider-config` does.
pub fn wrap_store(
    store: Arc<dyn Store>,
    config_path: &Path,
) -> Result<Arc<dyn Store>, EncryptionError> {
    let config = load_config(config_path)?;
    for (rule, chain) in &config.rules {
        info!(config = %config_path.display(), resource = %rule, providers = %chain.describe(), "encryption at rest configured");
    }
    Ok(Arc::new(EncryptingStore::new(store, config)))
}

impl EncryptionConfig {
    /// Parses and validates an `EncryptionConfiguration`; `path` names it in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<EncryptionConfig, EncryptionError> {
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|source| EncryptionError::ParseConfig {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |errors: Vec<FieldError>| EncryptionError::InvalidConfig {
            path: path.to_path_buf(),
            errors,
        };
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        if raw.api_version != API_VERSION {
            err(
                "apiVersion".into(),
                format!("must be {API_VERSION:?}, got {:?}", raw.api_version),
            );
        }
        if raw.kind != KIND {
            err(
                "kind".into(),
                format!("must be {KIND:?}, got {:?}", raw.kind),
            );
        }
        if raw.resources.is_empty() {
            err(
                "resources".into(),
                "at least one resources is required".into(),
            );
        }
        let mut chains = Vec::new();
        for (i, rule) in raw.resources.iter().enumerate() {
            let r = format!("resources[{i}].resources");
            let p = format!("resources[{i}].providers");
            if rule.resources.is_empty() {
                err(r.clone(), format!("at least one {r} is required"));
            }
            if let Some(message) = resource_overlap(&rule.resources) {
                err(r.clone(), message.into());
            }
            for (j, name) in rule.resources.iter().enumerate() {
                if let Some(message) = resource_name_problem(name) {
                    err(format!("{r}[{j}]"), format!("{name:?}: {message}"));
                }
            }
            if rule.providers.is_empty() {
                err(p.clone(), format!("at least one {p} is required"));
            }
            let mut transformers = Vec::new();
            for (j, provider) in rule.providers.iter().enumerate() {
                match build_provider(provider, &format!("{p}[{j}]")) {
                    Ok(mut ts) => transformers.append(&mut ts),
                    Err(mut es) => errors_append(&mut err, &mut es),
                }
            }
            chains.push(Arc::new(ProviderChain { transformers }));
        }
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        Self::assemble(&raw.resources, chains).map_err(|e| invalid(vec![e]))
    }

    /// Maps each rule's resources to storage prefixes. As in Kubernetes, a resource named
    /// in several rules gets their providers in rule order, and a resource covered by an
    /// earlier `*.<group>` or `*.*` rule may not be named again (it would be masked).
    fn assemble(
        rules: &[RawRule],
        chains: Vec<Arc<ProviderChain>>,
    ) -> Result<EncryptionConfig, FieldError> {
        let mut by_rule: HashMap<GroupResource, Vec<Arc<Transformer>>> = HashMap::new();
        let mut order: Vec<GroupResource> = Vec::new();
        for (i, (rule, chain)) in rules.iter().zip(&chains).enumerate() {
            for (j, name) in rule.resources.iter().enumerate() {
                let gr = GroupResource::parse(name);
                for masking in [
                    GroupResource::any_in_group(&gr.group),
                    GroupResource::any_in_group("*"),
                ] {
                    if by_rule.contains_key(&masking) {
                        return Err(FieldError {
                            field: format!("resources[{i}].resources[{j}]"),
                            message: format!(
                                "resource {:?} is masked by earlier rule {:?}",
                                gr.to_string(),
                                masking.to_string()
                            ),
                        });
                    }
                }
                if !by_rule.contains_key(&gr) {
                    order.push(gr.clone());
                }
                by_rule
                    .entry(gr)
                    .or_default()
                    .extend(chain.transformers.iter().cloned());
            }
        }
        let mut config = EncryptionConfig {
            exact: HashMap::new(),
            by_group: HashMap::new(),
            any: None,
            unconfigured: Arc::new(ProviderChain {
                transformers: vec![Arc::new(Transformer::identity())],
            }),
            rules: Vec::new(),
        };
        for gr in order {
            let Some(transformers) = by_rule.remove(&gr) else {
                continue;
            };
            let chain = Arc::new(ProviderChain { transformers });
            config.rules.push((gr.to_string(), chain.clone()));
            if gr.is_any() {
                config.any = Some(chain);
            } else if gr.resource == "*" {
                let covered = storage_resources(|g, _| g == gr.group);
                if covered.is_empty() {
                    warn!(rule = %gr, "no resource this apiserver stores is in group {:?}", gr.group);
                }
                for s in covered {
                    config.by_group.entry(s).or_insert_with(|| chain.clone());
                }
            } else {
                let mut covered =
                    storage_resources(|g, plural| g == gr.group && plural == gr.resource);
                if covered.is_empty() {
                    // Not served (yet): its objects would live under the resource's name.
                    warn!(rule = %gr, "not a resource this apiserver stores; encrypting /registry/{}/ should it appear", gr.resource);
                    covered.push(gr.resource.clone());
                }
                for s in covered {
                    config.exact.entry(s).or_insert_with(|| chain.clone());
                }
            }
        }
        Ok(config)
    }

    /// The provider chain for store key `key` (`/registry/<resource>/...`): an exact
    /// rule, else a group wildcard, else `*.*`, else plaintext.
    fn chain_for(&self, key: &str) -> &ProviderChain {
        let resource = key
            .strip_prefix("/registry/")
            .and_then(|rest| rest.split('/').next());
        resource
            .and_then(|r| self.exact.get(r).or_else(|| self.by_group.get(r)))
            .or(self.any.as_ref())
            .unwrap_or(&self.unconfigured)
    }

    /// The stored form of `plaintext` written under store key `key`.
    pub fn encrypt(&self, key: &str, plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        self.chain_for(key).encrypt(key, plaintext)
    }

    /// The plaintext of a value read from store key `key`.
    pub fn decrypt(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        self.chain_for(key).decrypt(key, stored)
    }

    /// The provider and key that encrypt writes to `key` (`aescbc:key1`, `identity`).
    pub fn write_provider(&self, key: &str) -> String {
        self.chain_for(key)
            .transformers
            .first()
            .map_or_else(|| "identity".to_string(), |t| t.describe())
    }
}

fn errors_append(err: &mut impl FnMut(String, String), es: &mut Vec<FieldError>) {
    for e in es.drain(..) {
        err(e.field, e.message);
    }
}

/// The storage resources (`/registry/<this>/`) of the served resources whose storage
/// group and plural pass `matches`. Objects of `events.k8s.io` are core events in
/// Kubernetes' storage, so they count as group `""` here, as the config must name them.
fn storage_resources(matches: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in registry::RESOURCES {
        let group = if r.group == "events.k8s.io" {
            ""
        } else {
            r.group
        };
        if matches(group, r.plural) && !out.iter().any(|s| s == r.storage_resource) {
            out.push(r.storage_resource.to_string());
        }
    }
    out
}

/// Kubernetes' rule: one resource list may neither repeat a resource nor hold a
/// wildcard together with what it covers.
fn resource_overlap(resources: &[String]) -> Option<&'static str> {
    let parsed: Vec<GroupResource> = resources.iter().map(|r| GroupResource::parse(r)).collect();
    for (i, a) in parsed.iter().enumerate() {
        for (j, b) in parsed.iter().enumerate() {
            if i == j {
                continue;
            }
            if a == b {
                return Some("the same resource cannot be specified multiple times");
            }
            if a.is_any() || (a.group == b.group && (a.resource == "*" || b.resource == "*")) {
                return Some("using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked");
            }
        }
    }
    None
}

/// Kubernetes' checks of one resource name.
fn resource_name_problem(name: &str) -> Option<&'static str> {
    if name.to_lowercase() != name {
        return Some("resource name should not contain capital letters");
    }
    if name == "*" {
        return Some("use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources");
    }
    if matches!(
        name,
        "apiserveripinfo" | "serviceipallocations" | "servicenodeportallocations"
    ) {
        return Some("resources which do not have REST API/s cannot be encrypted");
    }
    let gr = GroupResource::parse(name);
    if gr.group == "events.k8s.io" {
        return Some("'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file");
    }
    if gr.group == "extensions" {
        return Some("'extensions' group has been removed and cannot be used for encryption");
    }
    if gr.group == "*" && gr.resource != "*" {
        return Some("encrypting the same resource across groups is not supported");
    }
    None
}

/// The transformers of one provider entry (one per key, in order), or its problems.
fn build_provider(
    provider: &RawProvider,
    path: &str,
) -> Result<Vec<Arc<Transformer>>, Vec<FieldError>> {
    let set = [
        provider.identity.is_some(),
        provider.aescbc.is_some(),
        provider.aesgcm.is_some(),
        provider.secretbox.is_some(),
        provider.kms.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    let one = |message: &str| {
        vec![FieldError {
            field: path.to_string(),
            message: message.to_string(),
        }]
    };
    if set == 0 {
        return Err(one("provider does not contain any of the expected providers: identity, aescbc, aesgcm, secretbox"));
    }
    if set > 1 {
        return Err(one("more than one provider specified in a single element, should split into different list elements"));
    }
    if provider.kms.is_some() {
        return Err(vec![FieldError {
            field: format!("{path}.kms"),
            message:
                "KMS providers are not supported by this apiserver; use aescbc, aesgcm or secretbox"
                    .into(),
        }]);
    }
    if provider.identity.is_some() {
        return Ok(vec![Arc::new(Transformer::identity())]);
    }
    let (name, keys, sizes): (&'static str, &RawKeys, &[usize]) =
        match (&provider.aescbc, &provider.aesgcm, &provider.secretbox) {
            (Some(k), _, _) => ("aescbc", k, AES_KEY_SIZES),
            (_, Some(k), _) => ("aesgcm", k, AES_KEY_SIZES),
            (_, _, Some(k)) => ("secretbox", k, SECRETBOX_KEY_SIZES),
            _ => {
                return Err(one(
                    "provider does not contain any of the expected providers",
                ))
            }
        };
    let keys_path = format!("{path}.{name}.keys");
    if keys.keys.is_empty() {
        return Err(vec![FieldError {
            field: keys_path,
            message: "at least one keys is required".into(),
        }]);
    }
    let mut errors = Vec::new();
    let mut transformers = Vec::new();
    for (k, key) in keys.keys.iter().enumerate() {
        let field = |f: &str| format!("{keys_path}[{k}].{f}");
        if key.name.is_empty() {
            errors.push(FieldError {
                field: field("name"),
                message: "name is a mandatory field for a key".into(),
            });
        }
        if key.secret.is_empty() {
            errors.push(FieldError {
                field: field("secret"),
                message: "secret is a mandatory field for a key".into(),
            });
            continue;
        }
        let secret = match base64::engine::general_purpose::STANDARD.decode(key.secret.trim()) {
            Ok(s) => s,
            Err(_) => {
                errors.push(FieldError {
                    field: field("secret"),
                    message: "secrets must be base64 encoded".into(),
                });
                continue;
            }
        };
        if !sizes.contains(&secret.len()) {
            let expected = match sizes {
                [one] => format!("{one}"),
                _ => "16, 24 or 32".to_string(),
            };
            errors.push(FieldError {
                field: field("secret"),
                message: format!("must be {expected} bytes for {name}, got {}", secret.len()),
            });
            continue;
        }
        let cipher = match name {
            "aescbc" => AesKey::new(&secret).map(|k| Cipher::AesCbc(Box::new(k))),
            "aesgcm" => Gcm::new(&secret).map(|g| Cipher::AesGcm(Box::new(g))),
            _ => <crypto_secretbox::XSalsa20Poly1305 as crypto_secretbox::KeyInit>::new_from_slice(
                &secret,
            )
            .ok()
            .map(|c| Cipher::Secretbox(Box::new(c))),
        };
        let Some(cipher) = cipher else {
            errors.push(FieldError {
                field: field("secret"),
                message: format!("not a valid {name} key"),
            });
            continue;
        };
        transformers.push(Arc::new(Transformer {
            prefix: format!("k8s:enc:{name}:v1:{}:", key.name).into_bytes(),
            provider: name,
            key_name: key.name.clone(),
            cipher,
        }));
    }
    if errors.is_empty() {
        Ok(transformers)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------
// The store wrapper

/// A [`Store`] that keeps values encrypted in `inner` as an [`EncryptionConfig`] says and
/// hands out plaintext.
pub struct EncryptingStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl fmt::Debug for EncryptingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptingStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A read that could not be decrypted, as Kubernetes words it.
fn untransformable(key: &str, err: &EncryptionError) -> StoreError {
    StoreError::Corrupt(format!("unable to transform key {key:?}: {err}"))
}

fn open_kv(config: &EncryptionConfig, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
    let stored = std::mem::take(&mut kv.value);
    kv.value = config
        .chain_for(&kv.key)
        .decrypt_owned(&kv.key, stored)
        .map_err(|e| untransformable(&kv.key, &e))?;
    Ok(kv)
}

fn open_event(config: &EncryptionConfig, event: WatchEvent) -> Result<WatchEvent, StoreError> {
    Ok(match event {
        WatchEvent::Put { kv, prev } => WatchEvent::Put {
            kv: open_kv(config, kv)?,
            prev: prev.map(|p| open_kv(config, p)).transpose()?,
        },
        WatchEvent::Delete { prev, revision } => WatchEvent::Delete {
            prev: open_kv(config, prev)?,
            revision,
        },
        progress @ WatchEvent::Progress { .. } => progress,
    })
}

impl EncryptingStore {
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> EncryptingStore {
        EncryptingStore {
            inner,
            config: Arc::new(config),
        }
    }

    /// The wrapped store, which holds the encrypted values.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    pub fn config(&self) -> &EncryptionConfig {
        &self.config
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.config
            .chain_for(key)
            .encrypt_owned(key, value)
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    }

    /// Decrypts the current value a `Conflict` carries.
    fn open_error(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::Conflict {
                key,
                expected,
                current: Some(kv),
            } => match open_kv(&self.config, kv) {
                Ok(kv) => StoreError::Conflict {
                    key,
                    expected,
                    current: Some(kv),
                },
                Err(e) => e,
            },
            other => other,
        }
    }
}

#[async_trait]
impl Store for EncryptingStore {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        let (kv, rev) = self.inner.get(key).await?;
        Ok((kv.map(|kv| open_kv(&self.config, kv)).transpose()?, rev))
    }

    async fn range(&self, prefix: &str, opts: RangeOptions) -> Result<RangeResult, StoreError> {
        let mut result = self.inner.range(prefix, opts).await?;
        result.kvs = std::mem::take(&mut result.kvs)
            .into_iter()
            .map(|kv| open_kv(&self.config, kv))
            .collect::<Result<_, _>>()?;
        Ok(result)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let sealed = self.seal(key, value)?;
        self.inner
            .create(key, sealed)
            .await
            .map_err(|e| self.open_error(e))
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        let sealed = self.seal(key, value)?;
        self.inner
            .update(key, sealed, expected)
            .await
            .map_err(|e| self.open_error(e))
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let (prev, rev) = self
            .inner
            .delete(key, expected)
            .await
            .map_err(|e| self.open_error(e))?;
        match open_kv(&self.config, prev) {
            Ok(prev) => Ok((prev, rev)),
            Err(e) => {
                warn!(
                    key,
                    revision = rev,
                    "deleted a value that could not be decrypted"
                );
                Err(e)
            }
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let events = self.inner.watch(prefix, after).await?;
        let config = self.config.clone();
        // An error is the last item of a watch stream: stop after the first one.
        let stream = events
            .map(move |item| item.and_then(|event| open_event(&config, event)))
            .scan(false, |failed, item| {
                let out = if *failed {
                    None
                } else {
                    *failed = item.is_err();
                    Some(item)
                };
                futures::future::ready(out)
            });
        Ok(Box::pin(stream))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }

    async fn member_health(&self) -> Vec<Result<(), String>> {
        self.inner.member_health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::EmbeddedStore;

    const SECRET_KEY: &str = "/registry/secrets/default/db";
    const PLAIN: &[u8] = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A config with one rule for `resources` and the given provider entries (YAML).
    fn config_yaml(resources: &str, providers: &str) -> String {
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [{resources}]\n    providers:\n{providers}"
        )
    }

    fn keyed(provider: &str, keys: &[(&str, &[u8])]) -> String {
        let mut s = format!("      - {provider}:\n          keys:\n");
        for (name, secret) in keys {
            s.push_str(&format!(
                "            - name: {name}\n              secret: {}\n",
                b64(secret)
            ));
        }
        s
    }

    const IDENTITY: &str = "      - identity: {}\n";

    fn load(yaml: &str) -> EncryptionConfig {
        EncryptionConfig::from_yaml(yaml, Path::new("/etc/enc.yaml")).expect("valid config")
    }

    fn load_err(yaml: &str) -> String {
        EncryptionConfig::from_yaml(yaml, Path::new("/etc/enc.yaml"))
            .expect_err("invalid config")
            .to_string()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn every_provider_and_key_size_round_trips() {
        let cases: &[(&str, usize)] = &[
            ("aescbc", 16),
            ("aescbc", 24),
            ("aescbc", 32),
            ("aesgcm", 16),
            ("aesgcm", 24),
            ("aesgcm", 32),
            ("secretbox", 32),
        ];
        for &(provider, size) in cases {
            let secret = vec![7u8; size];
            let config = load(&config_yaml(
                "secrets",
                &keyed(provider, &[("k1", &secret)]),
            ));
            let stored = config.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
            let prefix = format!("k8s:enc:{provider}:v1:k1:");
            assert!(stored.starts_with(prefix.as_bytes()), "{provider}/{size}");
            assert!(
                !contains(&stored, b"aHVudGVyMg"),
                "{provider}/{size} leaks plaintext"
            );
            assert_eq!(
                config.decrypt(SECRET_KEY, &stored).expect("decrypt"),
                PLAIN,
                "{provider}/{size}"
            );
            // Random IVs/nonces: the same value never encrypts twice the same way.
            assert_ne!(config.encrypt(SECRET_KEY, PLAIN).expect("encrypt"), stored);
            // Empty values too (all padding for CBC).
            let empty = config.encrypt(SECRET_KEY, b"").expect("encrypt empty");
            assert_eq!(
                config.decrypt(SECRET_KEY, &empty).expect("decrypt empty"),
                b""
            );
            assert_eq!(config.write_provider(SECRET_KEY), format!("{provider}:k1"));
        }
    }

    /// Values built byte by byte, with ciphertexts from an independent implementation
    /// (Python `cryptography`/OpenSSL for AES, NaCl's own test vector for secretbox).
    #[test]
    fn known_answers_prove_the_wire_format() {
        let key32: Vec<u8> = (0u8..32).collect();
        let plaintext = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;

        // aescbc: prefix + 16-byte IV + AES-256-CBC/PKCS#7; no authenticated data.
        let config = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("key1", &key32)]),
        ));
        let iv = hex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
        let ct = hex("da54e881eafae68f34aa2ddb00e56b52ebc8f04455a57c27e78aeee850c41f0287a4a7535609c48c0de9e74dbdbab3018af66c95ed00289fb479660eb4e37993");
        let stored = [b"k8s:enc:aescbc:v1:key1:".as_slice(), &iv, &ct].concat();
        assert_eq!(
            config.decrypt(SECRET_KEY, &stored).expect("aescbc"),
            plaintext
        );
        // And our encryption under that IV gives exactly those bytes.
        let aes = AesKey::new(&key32).expect("key");
        let iv_arr: [u8; 16] = iv.clone().try_into().expect("iv");
        assert_eq!(aes.cbc_encrypt(&iv_arr, plaintext).expect("encrypt"), ct);

        // aesgcm: prefix + 12-byte nonce + AES-128-GCM ciphertext + tag, with the store
        // key as additional data.
        let config = load(&config_yaml(
            "secrets",
            &keyed("aesgcm", &[("key1", &key32[..16])]),
        ));
        let nonce = hex("b0b1b2b3b4b5b6b7b8b9babb");
        let sealed = hex("25ebdbf4a9f309059c793e65a71f6bc4f5713316bd8335dcdad477d8c96055a8e99b6f118003cbb4076ae94e099946f92d9a9a1b2414c13aae2c1cb14c2b3904bb50ea8e");
        let stored = [b"k8s:enc:aesgcm:v1:key1:".as_slice(), &nonce, &sealed].concat();
        assert_eq!(
            config.decrypt(SECRET_KEY, &stored).expect("aesgcm"),
            plaintext
        );
        // Bound to its key: the same bytes under another key do not authenticate.
        let moved = config.decrypt("/registry/secrets/default/other", &stored);
        assert!(
            matches!(
                moved,
                Err(EncryptionError::Decrypt {
                    provider: "aesgcm",
                    ..
                })
            ),
            "{moved:?}"
        );

        // A NIST CAVS GCM vector (gcmEncryptExtIV128.rsp) through the same code.
        let gcm = Gcm::new(&hex("c939cc13397c1d37de6ae0e1cb7c423c")).expect("key");
        let nonce: [u8; 12] = hex("b3d8cc017cbb89b39e0f67e2").try_into().expect("nonce");
        let aad = hex("24825602bd12a984e0092d3e448eda5f");
        let expected = hex("93fe7d9e9bfd10348a5606e5cafa73540032a1dc85f1c9786925a2e71d8272dd");
        let pt = hex("c3b3c41f113a31b73d9a5cd432103069");
        assert_eq!(gcm.seal(&nonce, &pt, &aad).expect("seal"), expected);
        assert_eq!(
            gcm.open(&[nonce.as_slice(), &expected].concat(), &aad)
                .expect("open"),
            pt
        );

        // secretbox: prefix + 24-byte nonce + NaCl secretbox (tag first), NaCl's vector.
        let key = hex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389");
        let config = load(&config_yaml(
            "secrets",
            &keyed("secretbox", &[("key1", &key)]),
        ));
        let nonce = hex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37");
        let message = hex(concat!(
            "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffce5ecbaaf33bd751a",
            "1ac728d45e6c61296cdc3c01233561f41db66cce314adb310e3be8250c46f06dceea3a7fa1348057",
            "e2f6556ad6b1318a024a838f21af1fde048977eb48f59ffd4924ca1c60902e52f0a089bc76897040",
            "e082f937763848645e0705"
        ));
        let boxed = hex(concat!(
            "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce48332ea7164d96a4",
            "476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738",
            "b48eeee314a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de",
            "56244a9e88d5f9b37973f622a43d14a6599b1f654cb45a74e355a5"
        ));
        let stored = [b"k8s:enc:secretbox:v1:key1:".as_slice(), &nonce, &boxed].concat();
        assert_eq!(
            config.decrypt(SECRET_KEY, &stored).expect("secretbox"),
            message
        );
    }

    #[test]
    fn rotation_encrypts_with_the_first_key_and_reads_with_any() {
        let old = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("key1", &[1u8; 32])]),
        ));
        let written_before = old.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
        let rotated = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("key2", &[2u8; 32]), ("key1", &[1u8; 32])]),
        ));
        assert_eq!(
            rotated
                .decrypt(SECRET_KEY, &written_before)
                .expect("old key reads"),
            PLAIN
        );
        let written_after = rotated.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
        assert!(written_after.starts_with(b"k8s:enc:aescbc:v1:key2:"));
        assert!(matches!(
            old.decrypt(SECRET_KEY, &written_after),
            Err(EncryptionError::NoMatchingPrefix)
        ));
        // Across providers too: moving from aescbc to secretbox.
        let migrated = load(&config_yaml(
            "secrets",
            &format!(
                "{}{}",
                keyed("secretbox", &[("sb", &[3u8; 32])]),
                keyed("aescbc", &[("key1", &[1u8; 32])])
            ),
        ));
        assert_eq!(
            migrated
                .decrypt(SECRET_KEY, &written_before)
                .expect("aescbc still reads"),
            PLAIN
        );
        assert!(migrated
            .encrypt(SECRET_KEY, PLAIN)
            .expect("encrypt")
            .starts_with(b"k8s:enc:secretbox:v1:sb:"));
    }

    #[test]
    fn a_wrong_key_is_an_error() {
        for provider in ["aesgcm", "secretbox"] {
            let right = load(&config_yaml(
                "secrets",
                &keyed(provider, &[("k", &[1u8; 32])]),
            ));
            let wrong = load(&config_yaml(
                "secrets",
                &keyed(provider, &[("k", &[9u8; 32])]),
            ));
            let stored = right.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
            let err = wrong.decrypt(SECRET_KEY, &stored).expect_err("wrong key");
            assert!(
                matches!(
                    err,
                    EncryptionError::Decrypt {
                        reason: reason::AUTH,
                        ..
                    }
                ),
                "{provider}: {err}"
            );
        }
        // CBC is not authenticated: a wrong key shows as bad padding (fixed IV, so this is
        // deterministic; Kubernetes' aescbc has the same weakness).
        let right = AesKey::new(&[1u8; 32]).expect("key");
        let iv = [5u8; 16];
        let stored = [
            b"k8s:enc:aescbc:v1:k:".as_slice(),
            &iv,
            &right.cbc_encrypt(&iv, PLAIN).expect("ct"),
        ]
        .concat();
        let wrong = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("k", &[9u8; 32])]),
        ));
        let err = wrong.decrypt(SECRET_KEY, &stored).expect_err("wrong key");
        assert!(
            matches!(
                err,
                EncryptionError::Decrypt {
                    provider: "aescbc",
                    ..
                }
            ),
            "{err}"
        );
        // Truncated values are errors, not panics.
        let good = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("k", &[1u8; 32])]),
        ));
        for cut in [0, 5, 16, 17, 31] {
            let short = [b"k8s:enc:aescbc:v1:k:".as_slice(), &stored[20..20 + cut]].concat();
            assert!(good.decrypt(SECRET_KEY, &short).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn identity_first_stores_plaintext_and_still_reads_encrypted_values() {
        let encrypting = load(&config_yaml(
            "secrets",
            &keyed("aesgcm", &[("key1", &[4u8; 32])]),
        ));
        let encrypted = encrypting.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
        let decrypting = load(&config_yaml(
            "secrets",
            &format!("{IDENTITY}{}", keyed("aesgcm", &[("key1", &[4u8; 32])])),
        ));
        assert_eq!(decrypting.encrypt(SECRET_KEY, PLAIN).expect("write"), PLAIN);
        assert_eq!(
            decrypting
                .decrypt(SECRET_KEY, &encrypted)
                .expect("encrypted read"),
            PLAIN
        );
        assert_eq!(
            decrypting
                .decrypt(SECRET_KEY, PLAIN)
                .expect("plaintext read"),
            PLAIN
        );
        // Encrypted with a key no longer listed: identity refuses it rather than
        // handing out ciphertext.
        let other = load(&config_yaml(
            "secrets",
            &keyed("aesgcm", &[("gone", &[4u8; 32])]),
        ));
        let orphan = other.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
        assert!(matches!(
            decrypting.decrypt(SECRET_KEY, &orphan),
            Err(EncryptionError::EncryptedDataForIdentity)
        ));
    }

    #[test]
    fn the_no_copy_paths_agree_with_kubernetes_order() {
        let aes = keyed("aescbc", &[("key1", &[1u8; 32])]);
        let encrypted = load(&config_yaml("secrets", &aes))
            .encrypt(SECRET_KEY, PLAIN)
            .expect("encrypt");
        let orphan = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("gone", &[1u8; 32])]),
        ))
        .encrypt(SECRET_KEY, PLAIN)
        .expect("encrypt");
        let values: [&[u8]; 5] = [PLAIN, &encrypted, &orphan, b"k8s:enc:", b""];
        for providers in [
            aes.clone(),
            format!("{IDENTITY}{aes}"),
            format!("{aes}{IDENTITY}"),
        ] {
            let config = load(&config_yaml("secrets", &providers));
            let chain = config.chain_for(SECRET_KEY);
            for value in values {
                assert_eq!(
                    format!("{:?}", chain.decrypt(SECRET_KEY, value)),
                    format!("{:?}", chain.decrypt_owned(SECRET_KEY, value.to_vec())),
                    "{providers} / {:?}",
                    String::from_utf8_lossy(value)
                );
            }
            let slice = chain.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
            let owned = chain
                .encrypt_owned(SECRET_KEY, PLAIN.to_vec())
                .expect("encrypt");
            assert_eq!(
                slice.starts_with(b"k8s:enc:"),
                owned.starts_with(b"k8s:enc:")
            );
        }
    }

    #[test]
    fn plaintext_reads_need_identity() {
        let config = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("key1", &[1u8; 32])]),
        ));
        assert!(matches!(
            config.decrypt(SECRET_KEY, PLAIN),
            Err(EncryptionError::NoMatchingPrefix)
        ));
        let with_identity = load(&config_yaml(
            "secrets",
            &format!("{}{IDENTITY}", keyed("aescbc", &[("key1", &[1u8; 32])])),
        ));
        assert_eq!(
            with_identity.decrypt(SECRET_KEY, PLAIN).expect("plaintext"),
            PLAIN
        );
    }

    #[test]
    fn rules_map_to_storage_prefixes() {
        let aes = keyed("aesgcm", &[("k", &[1u8; 16])]);
        let config = load(&config_yaml("secrets, configmaps", &aes));
        assert_eq!(config.write_provider("/registry/secrets/ns/a"), "aesgcm:k");
        assert_eq!(
            config.write_provider("/registry/configmaps/ns/a"),
            "aesgcm:k"
        );
        assert_eq!(config.write_provider("/registry/pods/ns/a"), "identity");
        // Unconfigured resources pass through, but an encrypted value there is an error.
        assert_eq!(
            config.encrypt("/registry/pods/ns/a", PLAIN).expect("plain"),
            PLAIN
        );
        let encrypted = config
            .encrypt("/registry/secrets/ns/a", PLAIN)
            .expect("encrypt");
        assert!(matches!(
            config.decrypt("/registry/pods/ns/a", &encrypted),
            Err(EncryptionError::EncryptedDataForIdentity)
        ));

        let config = load(&config_yaml(
            "\"*.apps\", events, horizontalpodautoscalers.autoscaling",
            &aes,
        ));
        for key in [
            "/registry/deployments/ns/a",
            "/registry/controllerrevisions/ns/a",
            "/registry/events/ns/a",
            "/registry/horizontalpodautoscalers/ns/a",
        ] {
            assert_eq!(config.write_provider(key), "aesgcm:k", "{key}");
        }
        assert_eq!(config.write_provider("/registry/secrets/ns/a"), "identity");

        let core = load(&config_yaml("\"*.\"", &aes));
        assert_eq!(core.write_provider("/registry/secrets/ns/a"), "aesgcm:k");
        assert_eq!(
            core.write_provider("/registry/deployments/ns/a"),
            "identity"
        );

        // Exact beats a group wildcard beats `*.*`, whatever the rule order.
        let yaml = format!(
            "{}  - resources: [\"*.*\"]\n    providers:\n{}",
            config_yaml("secrets", &keyed("secretbox", &[("sb", &[1u8; 32])])),
            IDENTITY
        );
        let layered = load(&yaml);
        assert_eq!(
            layered.write_provider("/registry/secrets/ns/a"),
            "secretbox:sb"
        );
        assert_eq!(
            layered.write_provider("/registry/anything-else/x"),
            "identity"
        );
    }

    #[test]
    fn a_resource_in_two_rules_gets_both_rules_providers() {
        let yaml = format!(
            "{}  - resources: [secrets]\n    providers:\n{}",
            config_yaml("secrets", &keyed("aescbc", &[("a", &[1u8; 32])])),
            keyed("aesgcm", &[("g", &[2u8; 32])])
        );
        let config = load(&yaml);
        let gcm_only = load(&config_yaml(
            "secrets",
            &keyed("aesgcm", &[("g", &[2u8; 32])]),
        ));
        let stored = gcm_only.encrypt(SECRET_KEY, PLAIN).expect("encrypt");
        assert_eq!(
            config
                .decrypt(SECRET_KEY, &stored)
                .expect("second rule reads"),
            PLAIN
        );
        assert_eq!(config.write_provider(SECRET_KEY), "aescbc:a");
    }

    #[test]
    fn bad_configs_name_the_file_and_the_field() {
        let err = load_err(&config_yaml(
            "secrets",
            &format!("{IDENTITY}{}", keyed("secretbox", &[("k", &[1u8; 16])])),
        ));
        assert!(err.contains("/etc/enc.yaml"), "{err}");
        assert!(err.contains("resources[0].providers[1].secretbox.keys[0].secret: must be 32 bytes for secretbox, got 16"), "{err}");

        let err = load_err(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("k", &[1u8; 20])]),
        ));
        assert!(err.contains("resources[0].providers[0].aescbc.keys[0].secret: must be 16, 24 or 32 bytes for aescbc, got 20"), "{err}");

        let err = load_err(&config_yaml("secrets", "      - aesgcm:\n          keys:\n            - name: k\n              secret: not*base64\n"));
        assert!(
            err.contains(
                "resources[0].providers[0].aesgcm.keys[0].secret: secrets must be base64 encoded"
            ),
            "{err}"
        );
        assert!(
            !err.contains("not*base64"),
            "secrets are never echoed: {err}"
        );

        let err = load_err(&config_yaml(
            "secrets",
            "      - aesgcm:\n          keys:\n            - secret: AAAAAAAAAAAAAAAAAAAAAA==\n",
        ));
        assert!(
            err.contains(
                "resources[0].providers[0].aesgcm.keys[0].name: name is a mandatory field"
            ),
            "{err}"
        );

        let err = load_err(&config_yaml(
            "secrets",
            "      - kms:\n          name: vault\n          endpoint: unix:///kms.sock\n",
        ));
        assert!(
            err.contains("resources[0].providers[0].kms: KMS providers are not supported"),
            "{err}"
        );

        let err = load_err(&config_yaml(
            "secrets",
            "      - identity: {}\n        aescbc:\n          keys: []\n",
        ));
        assert!(
            err.contains("resources[0].providers[0]: more than one provider"),
            "{err}"
        );

        let err = load_err(&config_yaml(
            "secrets",
            "      - aescbc:\n          keys: []\n",
        ));
        assert!(
            err.contains("resources[0].providers[0].aescbc.keys: at least one keys is required"),
            "{err}"
        );

        let err = load_err(&config_yaml("secrets, \"*.\"", IDENTITY));
        assert!(
            err.contains("resources[0].resources: using overlapping resources"),
            "{err}"
        );

        let err = load_err(&config_yaml("secrets, secrets", IDENTITY));
        assert!(
            err.contains("the same resource cannot be specified multiple times"),
            "{err}"
        );

        let err = load_err(&config_yaml("Secrets", IDENTITY));
        assert!(err.contains("resources[0].resources[0]: \"Secrets\": resource name should not contain capital letters"), "{err}");

        for bad in [
            "\"*\"",
            "\"events.events.k8s.io\"",
            "\"deployments.extensions\"",
            "\"secrets.*\"",
            "serviceipallocations",
        ] {
            let err = load_err(&config_yaml(bad, IDENTITY));
            assert!(err.contains("resources[0].resources[0]"), "{bad}: {err}");
        }

        let masked = format!(
            "{}  - resources: [deployments.apps]\n    providers:\n{IDENTITY}",
            config_yaml("\"*.apps\"", IDENTITY)
        );
        let err = load_err(&masked);
        assert!(err.contains("resources[1].resources[0]: resource \"deployments.apps\" is masked by earlier rule \"*.apps\""), "{err}");

        let err = load_err("apiVersion: v1\nkind: EncryptionConfig\nresources: []\n");
        assert!(err.contains("apiVersion: must be"), "{err}");
        assert!(err.contains("kind: must be"), "{err}");
        assert!(
            err.contains("resources: at least one resources is required"),
            "{err}"
        );

        let err = load_err(&config_yaml(
            "secrets",
            "      - aes-cbc:\n          keys: []\n",
        ));
        assert!(
            err.contains("/etc/enc.yaml") && err.contains("aes-cbc"),
            "{err}"
        );

        let err = load_err(&config_yaml("secrets", ""));
        assert!(
            err.contains("resources[0].providers: at least one resources[0].providers is required"),
            "{err}"
        );
    }

    #[test]
    fn load_config_reports_a_missing_file() {
        let err = load_config(Path::new("/nonexistent/enc.yaml")).expect_err("missing");
        assert!(matches!(err, EncryptionError::ReadConfig { .. }));
        assert!(err.to_string().contains("/nonexistent/enc.yaml"));
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let secret = [0x5au8; 32];
        let config = load(&config_yaml(
            "secrets",
            &keyed("aescbc", &[("key1", &secret)]),
        ));
        let printed = format!("{config:?}");
        assert!(printed.contains("aescbc:key1"), "{printed}");
        assert!(
            !printed.contains(&b64(&secret)) && !printed.contains("90, 90"),
            "{printed}"
        );
    }

    async fn wrapped(dir: &Path) -> (EncryptingStore, Arc<dyn Store>) {
        let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).await.expect("open"));
        let config = load(&config_yaml(
            "secrets",
            &keyed("aesgcm", &[("key1", &[8u8; 32])]),
        ));
        (EncryptingStore::new(raw.clone(), config), raw)
    }

    #[tokio::test]
    async fn the_store_wrapper_encrypts_writes_and_decrypts_every_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, raw) = wrapped(dir.path()).await;
        let start = store.current_revision().await.expect("rev");
        let mut watch = store
            .watch("/registry/secrets/", start)
            .await
            .expect("watch");

        let rev = store
            .create(SECRET_KEY, PLAIN.to_vec())
            .await
            .expect("create");
        let (stored, _) = raw.get(SECRET_KEY).await.expect("raw get");
        let stored = stored.expect("stored").value;
        assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!contains(&stored, b"aHVudGVyMg"));
        let (kv, _) = store.get(SECRET_KEY).await.expect("get");
        assert_eq!(kv.expect("kv").value, PLAIN);

        // Configmaps are not configured: stored as they are.
        store
            .create("/registry/configmaps/default/c", b"{}".to_vec())
            .await
            .expect("create cm");
        let (cm, _) = raw
            .get("/registry/configmaps/default/c")
            .await
            .expect("raw get");
        assert_eq!(cm.expect("cm").value, b"{}");

        let listed = store
            .range("/registry/secrets/", RangeOptions::default())
            .await
            .expect("range");
        assert_eq!(listed.kvs.len(), 1);
        assert_eq!(listed.kvs[0].value, PLAIN);

        // A conflict carries the current value, decrypted.
        match store.update(SECRET_KEY, b"{}".to_vec(), rev - 1).await {
            Err(StoreError::Conflict {
                current: Some(current),
                ..
            }) => assert_eq!(current.value, PLAIN),
            other => panic!("expected a conflict, got {other:?}"),
        }
        store
            .update(SECRET_KEY, b"{\"v\":2}".to_vec(), rev)
            .await
            .expect("update");
        let (prev, _) = store.delete(SECRET_KEY, None).await.expect("delete");
        assert_eq!(prev.value, b"{\"v\":2}");

        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
                .await
                .expect("event in time")
                .expect("stream open")
                .expect("event");
            match event {
                WatchEvent::Put { kv, prev } => seen.push((kv.value, prev.map(|p| p.value))),
                WatchEvent::Delete { prev, .. } => seen.push((Vec::new(), Some(prev.value))),
                WatchEvent::Progress { .. } => {}
            }
        }
        assert_eq!(seen[0], (PLAIN.to_vec(), None));
        assert_eq!(seen[1], (b"{\"v\":2}".to_vec(), Some(PLAIN.to_vec())));
        assert_eq!(seen[2], (Vec::new(), Some(b"{\"v\":2}".to_vec())));
    }

    #[tokio::test]
    async fn undecryptable_values_are_store_errors_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, raw) = wrapped(dir.path()).await;
        let start = store.current_revision().await.expect("rev");
        let mut watch = store
            .watch("/registry/secrets/", start)
            .await
            .expect("watch");
        // Written behind the wrapper's back: plaintext, and no identity provider.
        raw.create(SECRET_KEY, PLAIN.to_vec())
            .await
            .expect("raw create");
        for err in [
            store.get(SECRET_KEY).await.map(|_| ()).expect_err("get"),
            store
                .range("/registry/secrets/", RangeOptions::default())
                .await
                .map(|_| ())
                .expect_err("range"),
        ] {
            match err {
                StoreError::Corrupt(message) => {
                    assert!(message.contains(SECRET_KEY), "{message}");
                    assert!(message.contains("no matching prefix found"), "{message}");
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        // The watch ends with the error as its last item.
        let item = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
            .await
            .expect("in time")
            .expect("an item");
        assert!(
            matches!(item, Err(StoreError::Corrupt(ref m)) if m.contains(SECRET_KEY)),
            "{item:?}"
        );
        raw.create("/registry/secrets/default/later", PLAIN.to_vec())
            .await
            .expect("raw create");
        let after = tokio::time::timeout(std::time::Duration::from_secs(2), watch.next()).await;
        assert!(matches!(after, Ok(None)), "the stream ends after its error");
    }
}
