//! The shared vocabulary of Wisp: function names and qualifiers, the function
//! spec with its validation rules and limits, the REST resource types, and the
//! invoker interface that the data plane and the runtime meet at.
//!
//! Nothing here links wasmtime or a database, so every crate can depend on it.
//!
//! ```
//! use wisp_core::{Qualifier, Target};
//!
//! let target: Target = "hello:prod".parse().unwrap();
//! assert_eq!(target.name.as_str(), "hello");
//! assert_eq!(target.qualifier, Qualifier::Alias("prod".parse().unwrap()));
//! assert_eq!("hello:3".parse::<Target>().unwrap().qualifier, Qualifier::Version(3));
//! ```

pub mod destination;
pub mod digest;
pub mod error;
pub mod files;
pub mod invoke;
pub mod limits;
pub mod model;
pub mod names;
pub mod spec;

pub use destination::{Broker, BrokerTarget, Destination, DestinationError, Protocol};
pub use digest::{Digest, Swept, sweep_digest_files};
pub use error::{ErrorBody, ErrorCode};
pub use invoke::{
    ArtifactSource, Body, BoxError, BoxFuture, CompileSlot, Deployment, InvocationOutcome,
    InvocationRecord, InvocationSink, InvokeError, Invoker, LogCapture, PrepareError, Preparer,
    RuntimeSnapshot, RuntimeState, VersionGauges,
};
pub use model::*;
pub use names::{AliasName, FastMap, FastSet, FunctionName, NameError, Qualifier, Target};
pub use spec::{AsyncConfig, FunctionConfig, InvokeAuth, KEY_HEADER, Semantics, ValidationError};
