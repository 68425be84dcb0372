//! What each kind of step does when it runs.

use std::future::Future;
use std::time::Duration;

use keel_store::flow::{AttemptTrace, Claimed, StepStatus};
use serde_json::{Value, json};

use super::context::RunState;
use super::conversation::{agent, choose, excerpt, handed_over, strip_fences, system};
use super::execute::Outcome;
use super::failure::model_for;
use super::{Engine, millis, plan};
use crate::definition::*;
use crate::services::{CallError, ChatCall, HttpCall, Message, RetrieveCall};
use crate::template::TemplateError;

/// Everything a step's work needs.
pub(crate) struct StepRun<'a> {
    pub(crate) workflow: &'a Workflow,
    pub(crate) state: &'a RunState,
    /// The definition run: the step's own, or its map's item step.
    pub(crate) step: &'a Step,
    pub(crate) claimed: &'a Claimed,
    /// The template context, with `item` and `index` for a map's item.
    pub(crate) context: Value,
}

/// How a step asks its agent's model, beyond the messages.
#[derive(Default)]
struct Ask<'a> {
    /// A model alias instead of the agent's.
    model: Option<&'a str>,
    /// A completion token cap instead of the agent's.
    max_tokens: Option<u32>,
    /// Whether to ask for a JSON object.
    json: bool,
}

/// A template that failed to render fails the attempt for good: the same
/// input renders the same way next time.
pub(crate) fn rendering(what: &str) -> impl FnOnce(TemplateError) -> CallError + '_ {
    move |e| CallError::permanent(format!("{what}: {e}"))
}

/// Runs `call` within the step's timeout.
async fn timed<T>(
    step: &Step,
    call: impl Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    let Some(limit) = step.timeout else {
        return call.await;
    };
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(CallError::retryable(format!(
            "the step timed out after {}",
            humantime::format_duration(Duration::from_millis(
                u64::try_from(millis(limit)).unwrap_or(0)
            ))
        )))
    })
}

impl Engine {
    pub(crate) async fn run_kind(&self, run: &StepRun<'_>, trace: &mut AttemptTrace) -> Outcome {
        let result = match &run.step.kind {
            StepKind::Llm(llm) => self.llm(run, llm, trace).await,
            StepKind::Handoff(handoff) => self.handoff(run, handoff, trace).await,
            StepKind::Retrieve(retrieve) => self.retrieve(run, retrieve, trace).await,
            StepKind::Tool(tool) => self.tool(run, tool, trace).await,
            StepKind::Human(human) => Ok(self.human(run, human)),
            StepKind::Map(map) => map_step(run, map),
            StepKind::Join(_) => Ok(Outcome::Done(join(run))),
        };
        result.unwrap_or_else(Outcome::Fail)
    }

    /// Calls an agent's model and records the call in the trace.
    async fn chat(
        &self,
        run: &StepRun<'_>,
        agent: &Agent,
        messages: Vec<Message>,
        ask: Ask<'_>,
        trace: &mut AttemptTrace,
    ) -> Result<crate::services::ChatReply, CallError> {
        let own = ask.model.unwrap_or(&agent.model);
        let model = model_for(run.step, run.claimed.attempt, own);
        trace.input = Some(json!({"model": model, "messages": messages}));
        let mut call = ChatCall {
            tenant_id: run.claimed.tenant_id.clone(),
            run_id: run.claimed.run_id.clone(),
            workflow: run.workflow.name.clone(),
            step: run.claimed.key.clone(),
            model,
            messages,
            max_tokens: ask.max_tokens.or(agent.max_tokens),
            temperature: agent.temperature,
            json: ask.json,
        };
        self.hold_budget(run, &mut call).await?;
        let reply = timed(run.step, self.services.chat(call)).await?;
        trace.model = Some(reply.model.clone());
        trace.prompt_tokens = reply.prompt_tokens;
        trace.completion_tokens = reply.completion_tokens;
        trace.cost = reply.cost;
        Ok(reply)
    }

    /// Holds the call's worst case against the run's token and cost caps,
    /// if it has any; the call's completion is then capped to what was
    /// held. Settled when the attempt finishes.
    async fn hold_budget(&self, run: &StepRun<'_>, call: &mut ChatCall) -> Result<(), CallError> {
        let record = &run.state.run;
        if record.max_tokens.is_none() && record.max_cost.is_none() {
            return Ok(());
        }
        let estimate = self.services.estimate(call);
        call.max_tokens = Some(estimate.max_tokens);
        let claimed = run.claimed;
        let held = self
            .store
            .hold_run_budget(
                &claimed.run_id,
                &claimed.key,
                &claimed.token,
                estimate.tokens,
                estimate.cost,
            )
            .await
            .map_err(|e| CallError::retryable(format!("holding the run's budget: {e}")))?;
        if held {
            return Ok(());
        }
        Err(CallError::permanent(format!(
            "the run's budget cannot cover this call (up to {} tokens, {}): it has used {} \
             tokens and {} of limits.max_tokens = {} and limits.max_cost_usd = {}",
            estimate.tokens,
            estimate.cost,
            record.tokens_used,
            record.cost,
            record
                .max_tokens
                .map_or("none".to_owned(), |t| t.to_string()),
            record.max_cost.map_or("none".to_owned(), |c| c.to_string()),
        )))
    }

    async fn llm(
        &self,
        run: &StepRun<'_>,
        llm: &LlmStep,
        trace: &mut AttemptTrace,
    ) -> Result<Outcome, CallError> {
        let agent = agent(run.workflow, &llm.agent)?;
        let mut messages = system(agent, &run.context)?;
        messages.extend(handed_over(run, &llm.agent));
        let prompt = llm
            .prompt
            .render(&run.context)
            .map_err(rendering("prompt"))?;
        messages.push(Message::new("user", prompt));
        let reply = self
            .chat(
                run,
                agent,
                messages,
                Ask {
                    model: llm.model.as_deref(),
                    max_tokens: llm.max_tokens,
                    json: llm.json,
                },
                trace,
            )
            .await?;
        if !llm.json {
            return Ok(Outcome::Done(json!({
                "text": reply.text,
                "agent": agent.name,
                "model": reply.model,
            })));
        }
        // An agent that was asked for JSON and answered otherwise made a
        // mistake another attempt may not repeat.
        match serde_json::from_str::<Value>(strip_fences(&reply.text)) {
            Ok(value @ Value::Object(_)) => Ok(Outcome::Done(value)),
            _ => Err(CallError::retryable(format!(
                "agent '{}' was asked for a JSON object and answered: {}",
                agent.name,
                excerpt(&reply.text)
            ))),
        }
    }

    async fn handoff(
        &self,
        run: &StepRun<'_>,
        handoff: &HandoffStep,
        trace: &mut AttemptTrace,
    ) -> Result<Outcome, CallError> {
        let agent = agent(run.workflow, &handoff.agent)?;
        let names: Vec<&str> = handoff.targets.keys().map(String::as_str).collect();
        let mut messages = system(agent, &run.context)?;
        messages.push(Message::new(
            "system",
            format!(
                "Hand this over to exactly one of: {}. Answer with that name first, then one \
                 sentence on why.",
                names.join(", ")
            ),
        ));
        let prompt = handoff
            .prompt
            .render(&run.context)
            .map_err(rendering("prompt"))?;
        messages.push(Message::new("user", prompt.clone()));
        let reply = self
            .chat(run, agent, messages, Ask::default(), trace)
            .await?;
        let chosen = choose(&reply.text, &names).ok_or_else(|| {
            CallError::retryable(format!(
                "agent '{}' had to pick one of {} and answered: {}",
                agent.name,
                names.join(", "),
                excerpt(&reply.text)
            ))
        })?;
        Ok(Outcome::Done(json!({
            "agent": chosen,
            "reason": reply.text,
            "from": agent.name,
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": reply.text},
            ],
        })))
    }

    async fn retrieve(
        &self,
        run: &StepRun<'_>,
        retrieve: &RetrieveStep,
        trace: &mut AttemptTrace,
    ) -> Result<Outcome, CallError> {
        let query = retrieve
            .query
            .render(&run.context)
            .map_err(rendering("query"))?;
        let filter = match &retrieve.filter {
            Some(filter) => Some(filter.evaluate(&run.context).map_err(rendering("filter"))?),
            None => None,
        };
        let call = RetrieveCall {
            tenant_id: run.claimed.tenant_id.clone(),
            collection: retrieve.collection.clone(),
            query,
            top_k: retrieve.top_k,
            filter,
        };
        trace.input = Some(serde_json::to_value(&call).unwrap_or(Value::Null));
        let results = timed(run.step, self.services.retrieve(call)).await?;
        Ok(Outcome::Done(results))
    }

    async fn tool(
        &self,
        run: &StepRun<'_>,
        tool_step: &ToolStep,
        trace: &mut AttemptTrace,
    ) -> Result<Outcome, CallError> {
        let tool =
            run.workflow.tools.get(&tool_step.tool).ok_or_else(|| {
                CallError::permanent(format!("unknown tool '{}'", tool_step.tool))
            })?;
        let args = tool_step
            .args
            .evaluate(&run.context)
            .map_err(rendering("args"))?;
        trace.input = Some(args.clone());
        let http = match &tool.target {
            ToolTarget::Worker { queue } => {
                return Ok(Outcome::HandOver {
                    queue: queue.clone(),
                    input: json!({"tool": tool.name, "args": args}),
                });
            }
            ToolTarget::Http(http) => http,
        };
        let mut context = run.context.clone();
        context["args"] = args.clone();
        let headers = http
            .headers
            .iter()
            .map(|(name, value)| Ok((name.clone(), value.render(&context)?)))
            .collect::<Result<Vec<_>, TemplateError>>()
            .map_err(rendering("headers"))?;
        let body = match (&http.body, http.method.as_str()) {
            (Some(body), _) => Some(body.evaluate(&context).map_err(rendering("body"))?),
            (None, "GET" | "DELETE") => None,
            (None, _) => Some(args),
        };
        let call = HttpCall {
            method: http.method.clone(),
            url: http.url.render(&context).map_err(rendering("url"))?,
            headers,
            body,
            timeout: run.step.timeout,
        };
        Ok(Outcome::Done(
            timed(run.step, self.services.http(call)).await?,
        ))
    }

    /// A person's step: ask, then wait; once the deadline passes, the
    /// timeout policy decides.
    fn human(&self, run: &StepRun<'_>, human: &HumanStep) -> Outcome {
        let now = self.clock.now_ms();
        let detail = run.claimed.detail.clone().unwrap_or(Value::Null);
        if run.claimed.was != StepStatus::Waiting {
            let prompt = match human.prompt.render(&run.context) {
                Ok(prompt) => prompt,
                Err(e) => return Outcome::Fail(rendering("prompt")(e)),
            };
            return Outcome::Wait {
                detail: json!({"prompt": prompt, "assignee": null, "escalations": 0}),
                deadline_ms: now.saturating_add(millis(human.sla)),
            };
        }
        let escalations = detail["escalations"].as_u64().unwrap_or(0);
        match &human.on_timeout {
            TimeoutAction::Default(value) => Outcome::Done(value.clone()),
            TimeoutAction::Escalate(e) if escalations == 0 => {
                let prompt = e
                    .message
                    .as_ref()
                    .and_then(|m| m.render(&run.context).ok())
                    .or_else(|| detail["prompt"].as_str().map(str::to_owned));
                Outcome::Wait {
                    detail: json!({"prompt": prompt, "assignee": e.to, "escalations": 1}),
                    deadline_ms: now.saturating_add(millis(e.sla)),
                }
            }
            TimeoutAction::Escalate(e) => Outcome::Fail(CallError::permanent(format!(
                "no answer within the SLA, nor from {} after escalation",
                e.to
            ))),
            TimeoutAction::Fail => {
                Outcome::Fail(CallError::permanent("no answer within the SLA".to_owned()))
            }
        }
    }
}

/// A map: the first time, its items; once they have ended, their outputs.
fn map_step(run: &StepRun<'_>, map: &MapStep) -> Result<Outcome, CallError> {
    let id = &run.step.id;
    let mut items: Vec<(usize, Value)> = run
        .state
        .steps
        .values()
        .filter_map(|s| {
            let (of, index) = plan::split_item(&s.key)?;
            let output = match s.status {
                StepStatus::Succeeded => s.output.clone().unwrap_or(Value::Null),
                _ => Value::Null,
            };
            (of == id).then_some((index, output))
        })
        .collect();
    if !items.is_empty() {
        items.sort_by_key(|(index, _)| *index);
        return Ok(Outcome::Done(Value::Array(
            items.into_iter().map(|(_, o)| o).collect(),
        )));
    }
    let list = map.over.evaluate(&run.context).map_err(rendering("over"))?;
    let Value::Array(list) = list else {
        return Err(CallError::permanent(format!(
            "`over` must give a list, and gave {}",
            excerpt(&list.to_string())
        )));
    };
    if list.is_empty() {
        return Ok(Outcome::Done(Value::Array(Vec::new())));
    }
    Ok(Outcome::Expand(plan::items(id, &list, map.max_parallel)))
}

/// A join: the outputs of its dependencies that succeeded, by id.
fn join(run: &StepRun<'_>) -> Value {
    let outputs: serde_json::Map<String, Value> = run
        .step
        .depends_on
        .iter()
        .filter(|d| {
            run.state
                .steps
                .get(*d)
                .is_some_and(|s| s.status == StepStatus::Succeeded)
        })
        .map(|d| (d.clone(), run.state.output(run.workflow, d)))
        .collect();
    Value::Object(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_with_timeout(timeout: Duration) -> Step {
        let text =
            "name: t\nagents: {a: {model: m}}\nsteps: [{id: s, kind: llm, agent: a, prompt: x}]";
        let mut step = crate::definition::parse(text).unwrap().steps.remove(0);
        step.timeout = Some(timeout);
        step
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_times_out_as_a_retryable_error() {
        let step = step_with_timeout(Duration::from_secs(30));
        let slow = async {
            tokio::time::sleep(Duration::from_secs(31)).await;
            Ok::<_, CallError>("late")
        };
        let error = timed(&step, slow).await.unwrap_err();
        assert!(error.retryable);
        assert_eq!(error.message, "the step timed out after 30s");

        let quick = async { Ok::<_, CallError>("on time") };
        assert_eq!(timed(&step, quick).await.unwrap(), "on time");
    }
}
