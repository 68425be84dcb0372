//! keel's orchestrator: durable multi-agent workflows.
//!
//! A workflow is a definition ([`definition`]) of agents, tools and steps
//! with dependencies; its steps call models through keel's own gateway
//! path, query collections, call tools, hand off between agents and wait
//! for people. Templates ([`template`]) carry the run's input and earlier
//! steps' outputs into prompts and arguments.

pub mod definition;
mod engine;
mod error;
pub mod services;
pub mod template;

pub use definition::{DefinitionError, Problem, Workflow, parse};
pub use engine::{Clock, Engine, EngineConfig, RunView, Task, TaskReport};
pub use error::FlowError;
pub use services::{
    CallError, ChatCall, ChatReply, Estimate, HttpCall, Message, RetrieveCall, Services,
};
pub use template::{Template, TemplateError, ValueTemplate};
