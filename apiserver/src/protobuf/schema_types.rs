//! The shapes of the generated field table in `schema.rs`: one [`Msg`] per Kubernetes
//! protobuf message, one [`Field`] per field, with the facts from the Go struct tags that
//! decide how the field appears in Kubernetes' JSON.

/// The Go field has `omitempty` in its `json` tag.
pub(super) const OMITEMPTY: u8 = 1;
/// The Go field has `omitzero` in its `json` tag.
pub(super) const OMITZERO: u8 = 2;
/// The Go field is a pointer: present on the wire only when set, so a zero it carries is kept.
pub(super) const POINTER: u8 = 4;
/// The Go field is an embedded struct with `json:""`: its fields are promoted into the parent.
pub(super) const INLINE: u8 = 8;

/// How a message is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Special {
    /// An object with the message's fields.
    Object,
    /// `meta/v1.Time`: RFC 3339 in seconds; the zero time is `null`.
    Time,
    /// `meta/v1.MicroTime`: RFC 3339 with microseconds; the zero time is `null`.
    MicroTime,
    /// `meta/v1.Duration`: a Go duration string such as `1h0m0s`.
    Duration,
    /// A message whose field 1 holds raw JSON (`RawExtension`, `FieldsV1`, apiextensions `JSON`).
    RawJson,
    /// `resource.Quantity`: its field 1 string.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// A Go slice type wrapped in a message (`+protobuf.nullable=true`): the `items` array.
    Items,
    /// apiextensions `JSONSchemaPropsOrArray`: a schema or an array of schemas.
    SchemaOrArray,
    /// apiextensions `JSONSchemaPropsOrBool`: a schema or a boolean.
    SchemaOrBool,
    /// apiextensions `JSONSchemaPropsOrStringArray`: a schema or an array of strings.
    SchemaOrStringArray,
}

/// The protobuf type of a field (for maps, of the value; keys are always strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    String,
    Bytes,
    Int32,
    Int64,
    Bool,
    Double,
    /// A message, by index into `MESSAGES`.
    Msg(u16),
}

/// Cardinality of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Card {
    One,
    Repeated,
    /// `map<string, Ty>`, entries with key tag 1 and value tag 2.
    Map,
}

#[derive(Debug)]
pub(super) struct Field {
    pub tag: u32,
    pub json: &'static str,
    pub ty: Ty,
    pub card: Card,
    pub flags: u8,
}

impl Field {
    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

#[derive(Debug)]
pub(super) struct Msg {
    /// Fully qualified protobuf name, e.g. `k8s.io.api.core.v1.Pod`.
    pub name: &'static str,
    pub special: Special,
    /// In Go struct declaration order, which is the order of keys in Kubernetes' JSON.
    pub fields: &'static [Field],
}
